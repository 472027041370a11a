//! stagesync-agent: the daemon that sits next to a PostgreSQL server.
//!
//! Layout:
//! - [`config`]: `agent.toml`, validated before any port is bound.
//! - [`transport`]: TCP + TLS 1.3 with required client certificates; the
//!   caller's identity rides along with every request.
//! - [`auth`]: every RPC is checked against the policy by caller identity.
//! - [`service`]: the `stagesync.v1.Agent` gRPC service.
//! - [`pg`]: the local server and its `pg_dump`/`pg_restore`.
//! - [`policy`]: every guard (direction, backup places, job requests);
//!   `Info` reports what it decides.
//! - [`jobs`]: refresh jobs, their state, progress, lease and supervisor;
//!   [`source`] dumps and pushes, [`dest`] receives, restores and swaps,
//!   [`db`] creates, swaps, rolls back and cleans databases.
//! - [`backup`]: backups straight into S3.
//! - [`frames`]: the dump stream's chunks, CRC32C, zstd and SHA-256.
//! - [`args`], [`sql`]: command lines and SQL text, always quoted.
//!
//! [`serve`] is the one entry point; the binary and the tests both use it.

#![deny(unsafe_code)]

pub mod args;
pub mod auth;
pub mod backup;
pub mod config;
pub mod db;
pub mod dest;
pub mod error;
pub mod frames;
pub mod jobs;
pub mod mask;
pub mod pg;
pub mod policy;
mod procs;
pub mod service;
pub mod source;
pub mod sql;
pub mod transport;

use std::future::Future;
use std::sync::Arc;

use stagesync_certs::{ReloadingClientConfig, ReloadingServerConfig};
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

/// What `--check` reports of the server: how the agent reaches it, the
/// server's version and the login's rights. `Err((refused, why))`: the
/// server could not be queried; `refused` when it answered and turned the
/// login away (a configuration problem), not when it could not be reached.
pub async fn check_postgres(config: &AgentConfig) -> Result<Vec<String>, (bool, String)> {
    let pg_cfg = &config.postgres;
    let c = pg::connect(pg_cfg, "postgres")
        .await
        .map_err(|e| (!e.unreachable(), e.to_string()))?;
    let failed = |e: tokio_postgres::Error| (true, pg::error_chain(&e));
    let version: String = c
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(failed)?;
    let rights = pg::rights::of_login(&c).await.map_err(failed)?;
    let tls = match &pg_cfg.endpoint {
        config::Endpoint::Tcp { tls, .. } => {
            format!(
                "TLS {} against {}",
                tls.mode.as_str(),
                tls.ca_file.display()
            )
        }
        config::Endpoint::Socket { .. } => "unix socket (no TLS needed)".to_string(),
    };
    let names = rights.names();
    Ok(vec![
        format!(
            "postgres: {} ({tls}), server {version}",
            pg_cfg.endpoint.describe()
        ),
        format!(
            "login: role {:?} with {}; rights: {}",
            rights.role,
            pg_cfg.secret.describe(),
            if names.is_empty() {
                "none beyond its own".to_string()
            } else {
                names.join(", ")
            }
        ),
        format!("room for restores: {}", pg::disk_check(pg_cfg)),
    ])
}

/// Whether this server lets a job's restore log in as its own role (see
/// `db::JobLogin`): `None` for an agent that restores nothing, else the
/// probe's result, whose error says what to add to `pg_hba.conf`.
pub async fn check_job_logins(
    config: &AgentConfig,
) -> Option<Result<db::JobLogins, db::LoginProblem>> {
    if config.policy.may_overwrite.patterns.is_empty() {
        return None;
    }
    Some(db::probe_job_login(&config.postgres).await)
}

/// Removes what jobs interrupted by a crash left behind: unfinished
/// databases and work directories. Runs before the agent serves.
pub async fn recover(config: &AgentConfig) {
    jobs::supervisor::clean_work_dir(&config.work_dir).await;
    match db::reopen_closed(&config.postgres, &config.work_dir.join("closed")).await {
        Ok(reopened) if !reopened.is_empty() => {
            tracing::warn!(
                ?reopened,
                "reopened databases an interrupted swap had closed"
            )
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not check for databases an interrupted swap closed")
        }
    }
    match db::drop_orphans(&config.postgres, &db::Ledger::new(&config.work_dir), &[]).await {
        Ok(dropped) if !dropped.is_empty() => {
            tracing::info!(?dropped, "dropped databases left by interrupted jobs")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not look for databases left by interrupted jobs")
        }
    }
    // Restores would be refused: say so now, not at the first refresh.
    if let Some(Err(e)) = check_job_logins(config).await {
        tracing::error!(error = %e, "restores will be refused until this is fixed");
    }
}

/// Serves the agent on `listener` until `shutdown` completes, then aborts
/// running jobs and lets in-flight calls finish.
pub async fn serve(
    listener: TcpListener,
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with_ready(listener, config, shutdown, || {}).await
}

/// [`serve`], calling `ready` once recovery is done and calls are accepted.
pub async fn serve_with_ready(
    listener: TcpListener,
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
    ready: impl FnOnce(),
) -> Result<(), ServeError> {
    let tls = Arc::new(ReloadingServerConfig::load(config.tls.clone())?);
    let client_tls = Arc::new(ReloadingClientConfig::load(config.tls.clone())?);
    recover(&config).await;
    let config = Arc::new(config);
    {
        // S3 may be slow or unreachable: do not hold up the start for it.
        let config = config.clone();
        let left = backup::left_uploads(&config);
        tokio::spawn(async move { backup::abort_left_uploads(&config, left).await });
    }
    let jobs = Arc::new(jobs::Jobs::new());
    let backups = Arc::new(backup::Backups::new(config.clone()));
    let cancel = CancellationToken::new();
    let incoming = ReceiverStream::new(transport::accept_loop(listener, tls, cancel.clone()));
    let service = service::AgentService::new(config.clone(), jobs.clone(), backups, client_tls);
    let server = AgentServer::new(service)
        .max_decoding_message_size(frames::MAX_MESSAGE)
        .max_encoding_message_size(frames::MAX_MESSAGE);
    tracing::info!(agent = %config.identity, "serving");
    ready();
    let result = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(stagesync_certs::channel::STREAM_WINDOW))
        .initial_connection_window_size(Some(stagesync_certs::channel::CONNECTION_WINDOW))
        // Big HTTP/2 frames: fewer frame headers per 256 KiB chunk.
        .max_frame_size(Some(1 << 20))
        .http2_keepalive_interval(Some(stagesync_certs::channel::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(stagesync_certs::channel::KEEPALIVE_TIMEOUT))
        .add_service(server)
        .serve_with_incoming_shutdown(incoming, async {
            shutdown.await;
            cancel.cancel();
            jobs.abort_all("the agent is shutting down");
        })
        .await;
    cancel.cancel();
    tracing::info!(agent = %config.identity, "stopped");
    Ok(result?)
}
