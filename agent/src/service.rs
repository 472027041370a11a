//! The `stagesync.v1.Agent` gRPC service.

use std::sync::Arc;

use stagesync_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::auth::{Caller, authorize};
use crate::config::AgentConfig;
use crate::pg;
use crate::transport::PeerInfo;

pub struct AgentService {
    config: Arc<AgentConfig>,
}

impl AgentService {
    pub fn new(config: Arc<AgentConfig>) -> Self {
        AgentService { config }
    }

    fn authorize<T>(&self, req: &Request<T>, wanted: Caller, rpc: &str) -> Result<(), Status> {
        let peer = req.extensions().get::<PeerInfo>();
        match authorize(&self.config, peer, wanted, rpc) {
            Ok(id) => {
                tracing::debug!(caller = %id, rpc, "authorized");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(remote = ?peer.map(|p| p.remote), rpc, error = %e, "call refused");
                Err(e.into())
            }
        }
    }

    async fn info(&self) -> pb::InfoResponse {
        let cfg = &self.config;
        let pg_cfg = &cfg.postgres;
        let policy = &cfg.policy;
        let postgres = match pg::server_info(pg_cfg).await {
            Ok(info) => pb::PostgresInfo {
                reachable: true,
                error: String::new(),
                server_version: info.version,
                server_version_num: info.version_num,
                databases: info
                    .databases
                    .into_iter()
                    .map(|d| pb::Database {
                        may_dump: policy.may_dump.matches(&d.name),
                        may_overwrite: policy.may_overwrite.matches(&d.name),
                        name: d.name,
                        owner: d.owner,
                        size_bytes: d.size_bytes,
                    })
                    .collect(),
                socket_dir: pg_cfg.socket_dir.display().to_string(),
                port: pg_cfg.port.into(),
            },
            Err(error) => pb::PostgresInfo {
                reachable: false,
                error,
                socket_dir: pg_cfg.socket_dir.display().to_string(),
                port: pg_cfg.port.into(),
                ..Default::default()
            },
        };
        let (pg_dump_version, pg_dump_major) = pg::tool_version(&pg_cfg.bin_dir, "pg_dump").await;
        let (pg_restore_version, pg_restore_major) =
            pg::tool_version(&pg_cfg.bin_dir, "pg_restore").await;
        // The statvfs field types differ between platforms, hence the casts.
        #[allow(clippy::unnecessary_cast)]
        let work_dir = match nix::sys::statvfs::statvfs(&cfg.work_dir) {
            Ok(s) => pb::WorkDir {
                path: cfg.work_dir.display().to_string(),
                free_bytes: s.blocks_available() as u64 * s.fragment_size() as u64,
                total_bytes: s.blocks() as u64 * s.fragment_size() as u64,
            },
            Err(_) => pb::WorkDir {
                path: cfg.work_dir.display().to_string(),
                ..Default::default()
            },
        };
        pb::InfoResponse {
            name: cfg.name.clone(),
            identity: cfg.identity.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            postgres: Some(postgres),
            tools: Some(pb::ToolInfo {
                bin_dir: pg_cfg.bin_dir.display().to_string(),
                pg_dump_version,
                pg_restore_version,
                pg_dump_major,
                pg_restore_major,
            }),
            policy: Some(pb::Policy {
                may_dump: policy.may_dump.patterns.clone(),
                may_overwrite: policy.may_overwrite.patterns.clone(),
                controllers: policy.controllers.iter().map(|i| i.to_string()).collect(),
                peers: policy.peers.iter().map(|i| i.to_string()).collect(),
            }),
            work_dir: Some(work_dir),
        }
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        self.authorize(&request, Caller::Controller, "Info")?;
        Ok(Response::new(self.info().await))
    }
}
