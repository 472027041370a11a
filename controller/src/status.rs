//! `stagesync status`: what each agent is, runs and may do.

use std::sync::Arc;
use std::time::Duration;

use stagesync_proto::v1::{InfoRequest, InfoResponse};

use crate::client::{self, AgentTarget, ClientError, ClientTls};

/// How long one agent gets to answer `Info`.
pub const INFO_TIMEOUT: Duration = Duration::from_secs(15);

/// Calls `Info` on one agent.
pub async fn info<T: ClientTls>(
    tls: Arc<T>,
    target: &AgentTarget,
) -> Result<InfoResponse, ClientError> {
    let mut client = client::connect(tls, target).await?;
    let mut req = tonic::Request::new(InfoRequest {});
    req.set_timeout(INFO_TIMEOUT);
    match client.info(req).await {
        Ok(resp) => Ok(resp.into_inner()),
        Err(status) => Err(client::explain(target, &status)),
    }
}

/// Calls `Info` on every agent at once; results come back in input order.
pub async fn info_all<T: ClientTls>(
    tls: Arc<T>,
    targets: &[AgentTarget],
) -> Vec<Result<InfoResponse, ClientError>> {
    futures::future::join_all(targets.iter().map(|t| info(tls.clone(), t))).await
}
