//! `PrepareRestore`: every check of the request, the job registered and
//! supervised, then the fresh database it restores into.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use stagesync_certs::Identity;
use stagesync_proto::v1 as pb;

use super::Restorer;
use crate::error::AgentError;
use crate::jobs::{DestSetup, Job, Side, StepError, supervisor};
use crate::{args, db, pg, policy, sql};

impl Restorer {
    /// `PrepareRestore`: checks everything, creates the fresh database.
    pub async fn prepare_restore(
        self: &Arc<Self>,
        req: pb::PrepareRestoreRequest,
    ) -> Result<pb::PrepareRestoreResponse, AgentError> {
        let cfg = &self.config;
        let mut setup = self.check_prepare(&req)?;
        if !self.check_rights(&setup.owner, &req.database).await? {
            // No superuser here (a managed service): the restore runs as
            // the agent's own login, which has no more rights than it.
            setup.login = db::JobLogin::agent(&cfg.postgres);
        }
        if let Some(busy) = self.jobs.busy(&req.database) {
            return Err(AgentError::precondition(&cfg.name, busy));
        }
        let new_db = sql::new_database(&req.job_id);
        // A split stream lands its schema file here.
        let work_dir = setup
            .shape
            .post_data_file
            .then(|| supervisor::jobs_dir(&cfg.work_dir).join(&req.job_id));
        let job = Job::new(
            &cfg.name,
            &req.job_id,
            Side::Dest,
            &req.database,
            new_db.clone(),
            work_dir,
            Some(setup),
        );
        self.jobs
            .insert(job.clone())
            .map_err(|r| AgentError::precondition(&cfg.name, r))?;
        // Supervised from now on: if this call is cancelled half-way, the
        // lease still ends the job and the cleanup still runs.
        supervisor::spawn(cfg.clone(), job.clone());
        let this = self.clone();
        let j = job.clone();
        let made = tokio::spawn(async move { this.make_database(&j).await })
            .await
            .unwrap_or_else(|e| Err(format!("preparing failed: {e}")));
        if let Err(e) = made {
            job.fail(StepError::new(pb::Step::Prepare, e.clone()));
            return Err(AgentError::precondition(&cfg.name, e));
        }
        tracing::info!(job = %job.id, database = %req.database, new = %new_db, "prepared");
        Ok(pb::PrepareRestoreResponse {
            new_database: new_db,
            previous_database: sql::previous_database(&req.database),
        })
    }

    /// Checks a request against the policy and the protocol; what the job
    /// will need.
    fn check_prepare(&self, req: &pb::PrepareRestoreRequest) -> Result<DestSetup, AgentError> {
        let cfg = &self.config;
        let invalid = |r: String| AgentError::invalid(&cfg.name, r);
        policy::job_id(cfg, &req.job_id)?;
        policy::may_overwrite(cfg, &req.database)?;
        if req.unmasked {
            policy::may_receive_unmasked(cfg, "the refresh the plan asks for (`unmasked`)")?;
        }
        if req.owner.is_empty() {
            return Err(invalid("the owner role is empty".into()));
        }
        let shape = policy::shape(cfg, req.shape.as_ref())?;
        policy::jobs(cfg, req.jobs)?;
        let restore = req.restore.clone().unwrap_or_default();
        let login = db::JobLogin::for_job(&req.job_id);
        let who = args::RestoreAs {
            login: &login.role,
            owner: &req.owner,
        };
        args::pg_restore(&cfg.postgres, "x", who, &restore, args::RestoreFrom::Stdin)
            .map_err(&invalid)?;
        let post_sql = sql::substitute(&req.post_restore_sql, &req.params).map_err(&invalid)?;
        let staging = req.staging.clone().unwrap_or_default();
        policy::staging(cfg, &staging)?;
        policy::ticket(cfg, &req.ticket)?;
        Ok(DestSetup {
            owner: req.owner.clone(),
            login,
            staging,
            shape,
            jobs: req.jobs,
            restore,
            post_sql,
            ticket: Mutex::new(Some(req.ticket.clone())),
            ticket_expires: Instant::now() + cfg.jobs.ticket_ttl,
            source: self.check_source(&req.source_identity)?,
        })
    }

    /// The owner role exists and holds no right beyond its own objects,
    /// and the agent's login may restore as it; true when that login is a
    /// superuser.
    async fn check_rights(&self, owner: &str, live: &str) -> Result<bool, AgentError> {
        let cfg = &self.config;
        let internal = |e: String| AgentError::internal(&cfg.name, e);
        let reading = |e: tokio_postgres::Error| {
            internal(format!("reading role {owner:?}: {}", pg::error_chain(&e)))
        };
        let client = pg::connect(&cfg.postgres, "postgres")
            .await
            .map_err(|e| internal(e.to_string()))?;
        match pg::role(&client, owner).await.map_err(reading)? {
            Some(role) => policy::owner(cfg, &role)?,
            None => {
                return Err(AgentError::precondition(
                    &cfg.name,
                    format!("the owner role {owner:?} does not exist here: create it first"),
                ));
            }
        }
        let rights = pg::rights::of_login(&client).await.map_err(reading)?;
        let member = pg::rights::member_of(&client, owner)
            .await
            .map_err(reading)?;
        let role_settings = pg::rights::role_settings_in(&client, live)
            .await
            .map_err(reading)?;
        let missing = rights.missing_for_restore(owner, member, &role_settings);
        if !missing.is_empty() {
            return Err(AgentError::precondition(
                &cfg.name,
                format!(
                    "the agent's login {:?} on PostgreSQL at {} lacks what a restore needs; nothing was changed. Missing: {}",
                    rights.role,
                    cfg.postgres.endpoint.describe(),
                    missing.join("; ")
                ),
            ));
        }
        Ok(rights.superuser)
    }

    /// The peer whose stream feeds the job: one listed in `policy.peers`.
    /// None: the job is fed from a backup by the controller
    /// (`RestoreBackup`), never by a peer's stream.
    fn check_source(&self, identity: &str) -> Result<Option<Identity>, AgentError> {
        let cfg = &self.config;
        if identity.is_empty() {
            return Ok(None);
        }
        let source: Identity = identity
            .parse()
            .map_err(|e| AgentError::invalid(&cfg.name, format!("source identity: {e}")))?;
        if !cfg.policy.peers.contains(&source) {
            return Err(AgentError::denied(
                &cfg.name,
                format!(
                    "{source} may not stream into this agent; add {:?} to policy.peers in {}",
                    source.name,
                    cfg.source.display()
                ),
            ));
        }
        Ok(Some(source))
    }

    /// Drops what crashed jobs left (it holds disk we may need), creates
    /// the job's database, the role its restore logs in as (checked by
    /// logging in) and its work directory.
    async fn make_database(&self, job: &Job) -> Result<(), String> {
        let _pipeline = job.pipeline.lock().await;
        let keep = self.jobs.live_new_databases();
        let ledger = db::Ledger::new(&self.config.work_dir);
        match db::drop_orphans(&self.config.postgres, &ledger, &keep).await {
            Ok(dropped) if !dropped.is_empty() => {
                tracing::info!(?dropped, "dropped leftover databases")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not clean leftover databases"),
        }
        let Some(setup) = &job.dest else {
            return Err("internal: a restore job without its setup".into());
        };
        let pg = &self.config.postgres;
        db::create_new(pg, &ledger, &job.new_database, &job.database, &setup.owner)
            .await
            .map_err(|e| e.0)?;
        db::create_job_login(pg, &setup.login, &setup.owner, &job.new_database)
            .await
            .map_err(|e| e.0)?;
        if let Some(dir) = &job.work_dir {
            tokio::fs::create_dir_all(dir.join("dump"))
                .await
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Ok(())
    }
}
