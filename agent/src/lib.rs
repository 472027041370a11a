//! stagesync-agent: the daemon that sits next to a PostgreSQL server.
//!
//! Layout:
//! - [`config`]: `agent.toml`, validated before any port is bound.
//! - [`transport`]: TCP + TLS 1.3 with required client certificates; the
//!   caller's identity rides along with every request.
//! - [`auth`]: every RPC is checked against the policy by caller identity.
//! - [`service`]: the `stagesync.v1.Agent` gRPC service.
//! - [`pg`]: the local server and its `pg_dump`/`pg_restore`.
//!
//! [`serve`] is the one entry point; the binary and the tests both use it.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod pg;
pub mod service;
pub mod transport;

use std::future::Future;
use std::sync::Arc;

use stagesync_certs::ReloadingServerConfig;
use stagesync_proto::AgentServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;

/// Exit code for a configuration the agent cannot use (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;
/// Exit code when the listen address cannot be bound (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = 69;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("tls: {0}")]
    Tls(#[from] stagesync_certs::TlsError),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the agent on `listener` until `shutdown` completes, then lets
/// in-flight calls finish.
pub async fn serve(
    listener: TcpListener,
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tls = Arc::new(ReloadingServerConfig::load(config.tls.clone())?);
    let config = Arc::new(config);
    let cancel = CancellationToken::new();
    let incoming = ReceiverStream::new(transport::accept_loop(listener, tls, cancel.clone()));
    let service = service::AgentService::new(config.clone());
    tracing::info!(agent = %config.identity, "serving");
    let result = tonic::transport::Server::builder()
        .add_service(AgentServer::new(service))
        .serve_with_incoming_shutdown(incoming, async {
            shutdown.await;
            cancel.cancel();
        })
        .await;
    cancel.cancel();
    tracing::info!(agent = %config.identity, "stopped");
    Ok(result?)
}
