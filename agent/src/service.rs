//! The `stagesync.v1.Agent` gRPC service.

use std::pin::Pin;
use std::sync::Arc;

use stagesync_certs::{Identity, ReloadingClientConfig};
use stagesync_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Caller, authorize};
use crate::config::AgentConfig;
use crate::dest::Restorer;
use crate::error::AgentError;
use crate::jobs::Jobs;
use crate::source::Dumper;
use crate::transport::PeerInfo;
use crate::{pg, policy};

/// What this agent does beyond the base protocol, listed in Info so a
/// controller asks only for what both agents of a pair understand.
pub const FEATURES: &[&str] = &[
    stagesync_proto::FEATURE_SPLIT_POST_DATA,
    stagesync_proto::FEATURE_DATA_LANES,
    stagesync_proto::FEATURE_BLAKE3,
    stagesync_proto::FEATURE_XXH3,
    stagesync_proto::FEATURE_BINARY_ROWS,
];

pub struct AgentService {
    config: Arc<AgentConfig>,
    jobs: Arc<Jobs>,
    dumper: Arc<Dumper>,
    restorer: Arc<Restorer>,
    backups: Arc<crate::backup::Backups>,
}

impl AgentService {
    pub fn new(
        config: Arc<AgentConfig>,
        jobs: Arc<Jobs>,
        backups: Arc<crate::backup::Backups>,
        client_tls: Arc<ReloadingClientConfig>,
    ) -> Self {
        AgentService {
            dumper: Arc::new(Dumper::new(config.clone(), jobs.clone(), client_tls)),
            restorer: Arc::new(Restorer::new(config.clone(), jobs.clone())),
            config,
            jobs,
            backups,
        }
    }

    fn authorize<T>(
        &self,
        req: &Request<T>,
        wanted: Caller,
        rpc: &str,
    ) -> Result<Identity, Status> {
        let peer = req.extensions().get::<PeerInfo>();
        match authorize(&self.config, peer, wanted, rpc) {
            Ok(id) => {
                tracing::debug!(caller = %id, rpc, "authorized");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(remote = ?peer.map(|p| p.remote), rpc, error = %e, "call refused");
                Err(e.into())
            }
        }
    }

    fn no_job(&self, id: &str) -> Status {
        AgentError::not_found(&self.config.name, format!("no job {id:?} here")).into()
    }

    /// What this agent is, what it may do, and what it sees: the answer
    /// to `Info`, which a controller's preflight decides on.
    async fn info(&self) -> pb::InfoResponse {
        let cfg = &self.config;
        pb::InfoResponse {
            name: cfg.name.clone(),
            identity: cfg.identity.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            postgres: Some(self.postgres_info().await),
            tools: Some(self.tools_info().await),
            policy: Some(self.policy_info()),
            work_dir: Some(self.work_dir_info()),
            jobs: self.jobs.all().iter().map(|j| j.status()).collect(),
            features: FEATURES.iter().map(|f| f.to_string()).collect(),
        }
    }

    /// The local server, its databases with what the policy allows on each
    /// (decided by [`policy`], as the RPCs decide it), or why it cannot be
    /// reached.
    async fn postgres_info(&self) -> pb::PostgresInfo {
        let cfg = &self.config;
        let pg_cfg = &cfg.postgres;
        let located = pb::PostgresInfo {
            socket_dir: pg_cfg.endpoint.host(),
            port: pg_cfg.endpoint.port().into(),
            endpoint: pg_cfg.endpoint.describe(),
            tls: pg_cfg.endpoint.is_tcp(),
            login_role: pg_cfg.user.clone(),
            secret: pg_cfg.secret.describe(),
            disk_check: pg::disk_check(pg_cfg),
            ..Default::default()
        };
        let info = match pg::server_info(pg_cfg).await {
            Ok(info) => info,
            Err(error) => {
                return pb::PostgresInfo {
                    reachable: false,
                    error,
                    ..located
                };
            }
        };
        let databases = info
            .databases
            .into_iter()
            .map(|d| pb::Database {
                may_dump: policy::may_dump(cfg, &d.name).is_ok(),
                may_overwrite: policy::may_overwrite(cfg, &d.name).is_ok(),
                name: d.name,
                owner: d.owner,
                size_bytes: d.size_bytes,
            })
            .collect();
        pb::PostgresInfo {
            reachable: true,
            server_version: info.version,
            server_version_num: info.version_num,
            databases,
            data_dir_free_bytes: info.data_dir_free_bytes,
            unfit_owners: info
                .roles
                .iter()
                .filter_map(|r| Some((r.name.clone(), policy::unfit_owner(r)?.to_string())))
                .collect(),
            roles: info.roles.into_iter().map(|r| r.name).collect(),
            rights: info.rights.names(),
            max_database_size_bytes: pg_cfg.max_database_size.unwrap_or(0),
            ..located
        }
    }

    /// `pg_dump` and `pg_restore`: where they are and which versions.
    async fn tools_info(&self) -> pb::ToolInfo {
        let bin_dir = &self.config.postgres.bin_dir;
        let (pg_dump_version, pg_dump_major) = pg::tool_version(bin_dir, "pg_dump").await;
        let (pg_restore_version, pg_restore_major) = pg::tool_version(bin_dir, "pg_restore").await;
        pb::ToolInfo {
            bin_dir: bin_dir.display().to_string(),
            pg_dump_version,
            pg_restore_version,
            pg_dump_major,
            pg_restore_major,
        }
    }

    /// The policy as configured.
    fn policy_info(&self) -> pb::Policy {
        let policy = &self.config.policy;
        let masking = self.config.masking.as_ref();
        pb::Policy {
            may_dump: policy.may_dump.patterns.clone(),
            may_overwrite: policy.may_overwrite.patterns.clone(),
            controllers: policy.controllers.iter().map(|i| i.to_string()).collect(),
            peers: policy.peers.iter().map(|i| i.to_string()).collect(),
            may_backup_to: policy.may_backup_to.patterns.clone(),
            may_restore_from: policy.may_restore_from.patterns.clone(),
            may_receive_unmasked: policy.may_receive_unmasked,
            unmasked_peers: masking
                .map(|m| m.unmasked_peers.iter().map(|i| i.to_string()).collect())
                .unwrap_or_default(),
            unmasked_backup_to: masking
                .map(|m| m.unmasked_backup_to.patterns.clone())
                .unwrap_or_default(),
        }
    }

    /// The work dir and its free space (0 when it cannot be read).
    fn work_dir_info(&self) -> pb::WorkDir {
        let dir = &self.config.work_dir;
        let path = dir.display().to_string();
        // The statvfs field types differ between platforms, hence the casts.
        #[allow(clippy::unnecessary_cast)]
        match nix::sys::statvfs::statvfs(dir) {
            Ok(s) => pb::WorkDir {
                path,
                free_bytes: s.blocks_available() as u64 * s.fragment_size() as u64,
                total_bytes: s.blocks() as u64 * s.fragment_size() as u64,
            },
            Err(_) => pb::WorkDir {
                path,
                ..Default::default()
            },
        }
    }
}

type StatusStream = Pin<Box<dyn futures::Stream<Item = Result<pb::JobStatus, Status>> + Send>>;
type BackupStream = ReceiverStream<Result<pb::BackupEvent, Status>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    type BackupStream = BackupStream;

    async fn restore_backup(
        &self,
        request: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreBackupResponse>, Status> {
        self.authorize(&request, Caller::Controller, "RestoreBackup")?;
        Ok(Response::new(
            self.restorer.restore_backup(request.into_inner()).await?,
        ))
    }

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        self.authorize(&request, Caller::Controller, "Backup")?;
        let events = self.backups.start(request.into_inner())?;
        Ok(Response::new(ReceiverStream::new(events)))
    }

    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        self.authorize(&request, Caller::Controller, "Info")?;
        Ok(Response::new(self.info().await))
    }

    async fn prepare_restore(
        &self,
        request: Request<pb::PrepareRestoreRequest>,
    ) -> Result<Response<pb::PrepareRestoreResponse>, Status> {
        self.authorize(&request, Caller::Controller, "PrepareRestore")?;
        Ok(Response::new(
            self.restorer.prepare_restore(request.into_inner()).await?,
        ))
    }

    async fn start_dump(
        &self,
        request: Request<pb::StartDumpRequest>,
    ) -> Result<Response<pb::StartDumpResponse>, Status> {
        self.authorize(&request, Caller::Controller, "StartDump")?;
        let resp = self.dumper.start_dump(request.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn push_dump(
        &self,
        request: Request<Streaming<pb::DumpFrame>>,
    ) -> Result<Response<pb::PushDumpResponse>, Status> {
        let caller = self.authorize(&request, Caller::Peer, "PushDump")?;
        let resp = self
            .restorer
            .push_dump(caller, request.into_inner())
            .await?;
        Ok(Response::new(resp))
    }

    type WatchJobStream = StatusStream;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        self.authorize(&request, Caller::Controller, "WatchJob")?;
        let req = request.into_inner();
        let id = req.job_id;
        let side = pb::Side::try_from(req.side).unwrap_or(pb::Side::Unspecified);
        let job = self
            .jobs
            .find(&id, side)
            .into_iter()
            .next()
            .ok_or_else(|| self.no_job(&id))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let tick = self.config.jobs.status_interval;
        tokio::spawn(async move {
            let _guard = job.watch_guard();
            let mut changed = job.subscribe();
            loop {
                let status = job.status();
                // Decided from the status sent, so the last one sent is final.
                let done = matches!(
                    pb::Phase::try_from(status.phase),
                    Ok(pb::Phase::Committed
                        | pb::Phase::Failed
                        | pb::Phase::Aborted
                        | pb::Phase::Sent)
                );
                if tx.send(Ok(status)).await.is_err() || done {
                    break;
                }
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = tokio::time::sleep(tick) => {}
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        self.authorize(&request, Caller::Controller, "Commit")?;
        Ok(Response::new(
            self.restorer.commit(&request.into_inner().job_id).await?,
        ))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let caller = self.authorize(&request, Caller::Controller, "Abort")?;
        let req = request.into_inner();
        let side = pb::Side::try_from(req.side).unwrap_or(pb::Side::Unspecified);
        let found = self.jobs.find(&req.job_id, side);
        if found.is_empty() {
            return Err(self.no_job(&req.job_id));
        }
        let reason = if req.reason.is_empty() {
            format!("aborted by {caller}")
        } else {
            format!("aborted by {caller}: {}", req.reason)
        };
        for job in found {
            job.abort(&reason)
                .map_err(|r| AgentError::precondition(&self.config.name, r))?;
        }
        Ok(Response::new(pb::AbortResponse {}))
    }

    async fn mask(
        &self,
        request: Request<pb::MaskRequest>,
    ) -> Result<Response<pb::MaskResponse>, Status> {
        self.authorize(&request, Caller::Controller, "Mask")?;
        let req = request.into_inner();
        tracing::info!(database = %req.database, action = req.action, table = %req.table, "masking tools");
        Ok(Response::new(
            crate::mask::tools::run(&self.config, req).await?,
        ))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        self.authorize(&request, Caller::Controller, "Rollback")?;
        Ok(Response::new(
            self.restorer
                .rollback(&request.into_inner().database)
                .await?,
        ))
    }
}
