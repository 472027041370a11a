//! The masking tools of a pair's source agent (`Mask`): its rules against
//! the live schema, a rules skeleton, or masked rows of a table. The
//! controller only asks and shows; rules, key and raw rows stay on the
//! agent.

use std::sync::Arc;

use stagesync_proto::v1 as pb;

use crate::client::{self, AgentTarget, ClientError, ClientTls};

/// Asks `source` to run `action` on `database`.
pub async fn ask<T: ClientTls>(
    tls: Arc<T>,
    source: &AgentTarget,
    req: pb::MaskRequest,
) -> Result<pb::MaskResponse, ClientError> {
    let mut c = client::connect(tls, source).await?;
    c.mask(req)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| client::explain(source, &s))
}
