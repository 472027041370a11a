//! One way to build a test fleet: a source cluster with its agent
//! `prod-db`, a destination cluster with its agent `staging-db`, a
//! throwaway PKI and, on request, an S3-API server and a plan file for the
//! `stagesync` command. Suites say only how their fleet differs from the
//! standard one:
//!
//! ```no_run
//! # async fn f() {
//! use stagesync_harness::fleet::{AgentRun, Fleet};
//! let f = Fleet::builder()
//!     .prod(|p| p.may_dump.push("Prod *".into()))
//!     .staging_runs(AgentRun::Process)
//!     .build()
//!     .await;
//! let spec = f.pair();
//! # }
//! ```

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stagesync_certs::ReloadingClientConfig;
use stagesync_controller::refresh::PairSpec;
use stagesync_controller::{AgentTarget, ClientError};
use stagesync_proto::v1 as pb;

use crate::fixtures::{content_hashes, seed_rich, seed_stage};
use crate::proxy::tool_processes;
use crate::s3::{S3Server, profile_files};
use crate::{AgentProcess, AgentSpec, PgCluster, TestAgent, TestPki, eventually};

mod managed;
pub use managed::*;

/// The AWS profile the fleet's profile files hold, for its S3 server.
pub const S3_PROFILE: &str = "fleet";
const S3_ACCESS_KEY: &str = "AKIASTAGESYNCFLEET";
const S3_SECRET_KEY: &str = "fleet-secret-key-0123";
/// The bucket `backups()` makes, and what the agents may back up to and
/// restore from: that bucket on any loopback server.
pub const BACKUP_BUCKET: &str = "backups";
const BACKUP_PLACES: &str = "http://127.0.0.1:*/backups/*";

/// What the source cluster's `production` database holds.
enum Source {
    /// [`crate::fixtures::RICH_SCHEMA`].
    Rich,
    /// What these statements make.
    Sql(String),
}

/// What the destination cluster holds, if there is one.
#[derive(Clone, Copy, PartialEq)]
enum Dest {
    /// No destination cluster and no `staging-db`.
    None,
    Empty,
    /// The `stage` database of [`seed_stage`].
    Stage,
}

/// How an agent runs.
#[derive(Clone, Debug, Default)]
pub enum AgentRun {
    /// Inside the test process.
    #[default]
    InProcess,
    /// As the real binary, so a test can kill it.
    Process,
    /// As the real binary inside network namespace `netns`, listening on
    /// `ip` there.
    InNetns { netns: String, ip: IpAddr },
}

/// What a fleet is made of; [`Fleet::builder`] starts with the standard
/// one.
pub struct FleetBuilder {
    source: Source,
    dest: Dest,
    prod: AgentSpec,
    staging: AgentSpec,
    prod_run: AgentRun,
    staging_run: AgentRun,
    s3: bool,
    backups: bool,
    managed: bool,
    loopback_rows: bool,
}

impl FleetBuilder {
    /// Both clusters configured like a managed service
    /// ([`PgCluster::start_managed`]), and both agents reaching theirs over
    /// TCP with TLS (`verify-full`), as roles that are no superuser, with
    /// their passwords in files only the agent may read. The source's role
    /// has `pg_read_all_data` (and BYPASSRLS for the fixture's table with
    /// row-level security, SELECT on its large objects); the destination's
    /// CREATEDB, `pg_signal_backend` and membership in the owner `stage`.
    pub fn managed(mut self) -> Self {
        self.managed = true;
        self
    }

    /// The source cluster also listens on 127.0.0.1 without TLS
    /// ([`PgCluster::start_loopback`]) and `prod-db`'s copy lanes read
    /// rows over it (`postgres.copy_over_tcp`), logging in as `postgres`
    /// with a SCRAM password from a file; everything else uses the socket.
    pub fn source_rows_over_loopback(mut self) -> Self {
        self.loopback_rows = true;
        self
    }

    /// `production` holds what `sql` makes instead of the rich fixture.
    pub fn source_sql(mut self, sql: &str) -> Self {
        self.source = Source::Sql(sql.to_string());
        self
    }

    /// The destination cluster without the `stage` database.
    pub fn dest_unseeded(mut self) -> Self {
        self.dest = Dest::Empty;
        self
    }

    /// No destination cluster and no `staging-db` agent.
    pub fn no_dest(mut self) -> Self {
        self.dest = Dest::None;
        self
    }

    /// Changes what `prod-db` is and may do.
    pub fn prod(mut self, tweak: impl FnOnce(&mut AgentSpec)) -> Self {
        tweak(&mut self.prod);
        self
    }

    /// Changes what `staging-db` is and may do.
    pub fn staging(mut self, tweak: impl FnOnce(&mut AgentSpec)) -> Self {
        tweak(&mut self.staging);
        self
    }

    pub fn prod_runs(mut self, run: AgentRun) -> Self {
        self.prod_run = run;
        self
    }

    pub fn staging_runs(mut self, run: AgentRun) -> Self {
        self.staging_run = run;
        self
    }

    /// An S3-API server and AWS profile files for it ([`S3_PROFILE`]),
    /// which the agents are given too.
    pub fn s3(mut self) -> Self {
        self.s3 = true;
        self
    }

    /// [`s3`](Self::s3), with the bucket [`BACKUP_BUCKET`], which both
    /// agents may back up to and restore from.
    pub fn backups(mut self) -> Self {
        self.s3 = true;
        self.backups = true;
        self
    }

    /// Starts everything; panics with what failed.
    pub async fn build(mut self) -> Fleet {
        crate::init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("stagesync-fleet-")
            .tempdir()
            .expect("a temporary directory");
        let pki = TestPki::new().expect("a PKI");
        let start = || match self.managed {
            true => PgCluster::start_managed(&pki),
            false => PgCluster::start(),
        };
        let src = match self.loopback_rows {
            true => PgCluster::start_loopback(),
            false => start(),
        }
        .expect("the source cluster starts");
        let dst =
            (self.dest != Dest::None).then(|| start().expect("the destination cluster starts"));
        match &self.source {
            Source::Rich => seed_rich(&src, "production").await,
            Source::Sql(sql) => seed_sql(&src, sql).await,
        }
        .expect("seeding the source");
        let mut before = BTreeMap::new();
        if let Some(dst) = dst.as_ref().filter(|_| self.dest == Dest::Stage) {
            seed_stage(dst).await.expect("seeding the destination");
            before = content_hashes(dst, "stage").await.expect("hashing stage");
        }
        if self.managed {
            managed_roles(&src, dst.as_ref())
                .await
                .expect("the agents' roles");
            self.prod.postgres = Some(managed_keys(
                &src,
                dir.path(),
                "prod-db",
                MANAGED_SOURCE_ROLE,
                MANAGED_SOURCE_PASSWORD,
            ));
            if let Some(dst) = &dst {
                self.staging.postgres = Some(managed_keys(
                    dst,
                    dir.path(),
                    "staging-db",
                    MANAGED_DEST_ROLE,
                    MANAGED_DEST_PASSWORD,
                ));
            }
        }
        if self.loopback_rows {
            self.prod.postgres = Some(
                loopback_keys(&src, dir.path())
                    .await
                    .expect("a password for loopback logins"),
            );
        }
        let tls = pki
            .controller_tls("ops")
            .expect("the controller's certificate");
        let s3 = match self.s3 {
            true => Some(self.start_s3(dir.path()).await),
            false => None,
        };
        let prod = start_agent(&pki, &src, self.prod, &self.prod_run).await;
        let staging = match &dst {
            Some(dst) => Some(start_agent(&pki, dst, self.staging, &self.staging_run).await),
            None => None,
        };
        Fleet {
            prod,
            staging,
            s3,
            src,
            dst,
            before,
            kept: Vec::new(),
            tls,
            pki,
            dir,
        }
    }

    /// The S3 server and the profile files, given to both agents.
    async fn start_s3(&mut self, dir: &Path) -> S3Server {
        let server = S3Server::start(S3_ACCESS_KEY, S3_SECRET_KEY)
            .await
            .expect("the S3 server starts");
        let files = profile_files(dir, S3_PROFILE, S3_ACCESS_KEY, S3_SECRET_KEY)
            .expect("AWS profile files");
        if self.backups {
            std::fs::create_dir_all(server.root.join(BACKUP_BUCKET)).expect("the backup bucket");
        }
        for spec in [&mut self.prod, &mut self.staging] {
            spec.s3_files = Some(files.clone());
            // The whole bucket, unless the suite chose the agent's places.
            if self.backups && spec.may_backup_to.is_empty() {
                spec.may_backup_to.push(BACKUP_PLACES.into());
            }
            if self.backups && spec.may_restore_from.is_empty() {
                spec.may_restore_from.push(BACKUP_PLACES.into());
            }
        }
        server
    }
}

async fn seed_sql(cluster: &PgCluster, sql: &str) -> anyhow::Result<()> {
    cluster
        .exec("postgres", "CREATE DATABASE production")
        .await?;
    cluster.exec("production", sql).await
}

async fn start_agent(
    pki: &TestPki,
    cluster: &PgCluster,
    spec: AgentSpec,
    run: &AgentRun,
) -> FleetAgent {
    let name = spec.name.clone();
    let agent = match run {
        AgentRun::InProcess => TestAgent::start(pki, Some(cluster), spec)
            .await
            .map(FleetAgent::InProcess),
        AgentRun::Process => AgentProcess::spawn(pki, Some(cluster), spec)
            .await
            .map(FleetAgent::Process),
        AgentRun::InNetns { netns, ip } => {
            AgentProcess::spawn_in_netns(pki, Some(cluster), spec, netns, *ip)
                .await
                .map(FleetAgent::Process)
        }
    };
    agent.unwrap_or_else(|e| panic!("agent {name} does not start: {e:#}"))
}

/// A fleet agent, in the test process or in a process of its own.
pub enum FleetAgent {
    InProcess(TestAgent),
    Process(AgentProcess),
}

impl FleetAgent {
    /// Where a controller dials it, expecting its identity.
    pub fn target(&self) -> AgentTarget {
        match self {
            FleetAgent::InProcess(a) => a.target(),
            FleetAgent::Process(a) => a.target(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            FleetAgent::InProcess(a) => a.addr,
            FleetAgent::Process(a) => a.addr,
        }
    }

    pub fn work_dir(&self) -> PathBuf {
        match self {
            FleetAgent::InProcess(a) => a.work_dir(),
            FleetAgent::Process(a) => a.work_dir(),
        }
    }

    pub fn config_path(&self) -> &Path {
        match self {
            FleetAgent::InProcess(a) => &a.config_path,
            FleetAgent::Process(a) => &a.config_path,
        }
    }

    /// What a process agent logged (an agent in the test process logs
    /// through the test's own tracing).
    pub fn log_text(&self) -> String {
        match self {
            FleetAgent::InProcess(_) => String::new(),
            FleetAgent::Process(a) => a.log_text(),
        }
    }

    /// The agent's process; panics for an agent in the test process.
    pub fn process(&mut self) -> &mut AgentProcess {
        match self {
            FleetAgent::Process(p) => p,
            FleetAgent::InProcess(_) => panic!("this agent runs in the test process"),
        }
    }
}

/// A running fleet; dropping it stops the agents, then the rest.
pub struct Fleet {
    // Fields drop in this order: agents before the clusters they use.
    prod: FleetAgent,
    staging: Option<FleetAgent>,
    s3: Option<S3Server>,
    src: PgCluster,
    dst: Option<PgCluster>,
    /// `stage`'s content when the fleet was built.
    before: BTreeMap<String, String>,
    /// The stagesync databases expected on the destination (a kept
    /// previous database, once a refresh succeeded).
    kept: Vec<String>,
    tls: Arc<ReloadingClientConfig>,
    pki: TestPki,
    dir: tempfile::TempDir,
}

impl Fleet {
    /// The standard fleet: `production` on the source holds the rich
    /// fixture, `stage` on the destination (owned by role `stage`) older
    /// data; `prod-db` may dump `production`, `staging-db` may overwrite
    /// `stage` and takes streams from `prod-db`; both obey controller
    /// `ops`, whose certificate is in the PKI's directory.
    pub fn builder() -> FleetBuilder {
        let mut prod = AgentSpec::new("prod-db");
        prod.may_dump = vec!["production".into()];
        let mut staging = AgentSpec::new("staging-db");
        staging.may_overwrite = vec!["stage".into()];
        staging.peers = vec!["prod-db".into()];
        FleetBuilder {
            source: Source::Rich,
            dest: Dest::Stage,
            managed: false,
            loopback_rows: false,
            prod,
            staging,
            prod_run: AgentRun::default(),
            staging_run: AgentRun::default(),
            s3: false,
            backups: false,
        }
    }

    /// The source cluster.
    pub fn src(&self) -> &PgCluster {
        &self.src
    }

    /// The destination cluster.
    pub fn dst(&self) -> &PgCluster {
        self.dst.as_ref().expect("this fleet has no destination")
    }

    /// The source agent, `prod-db`.
    pub fn prod(&self) -> &FleetAgent {
        &self.prod
    }

    pub fn prod_mut(&mut self) -> &mut FleetAgent {
        &mut self.prod
    }

    /// The destination agent, `staging-db`.
    pub fn staging(&self) -> &FleetAgent {
        self.staging
            .as_ref()
            .expect("this fleet has no destination")
    }

    pub fn staging_mut(&mut self) -> &mut FleetAgent {
        self.staging
            .as_mut()
            .expect("this fleet has no destination")
    }

    /// Controller `ops`'s client configuration.
    pub fn tls(&self) -> Arc<ReloadingClientConfig> {
        self.tls.clone()
    }

    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The S3 server.
    pub fn s3(&self) -> &S3Server {
        self.s3.as_ref().expect("this fleet has no S3 server")
    }

    /// The AWS config and credentials files for [`S3_PROFILE`].
    pub fn aws_files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("config"),
            self.dir.path().join("credentials"),
        )
    }

    /// A directory for the test's own files, removed with the fleet.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where `stagesync` commands keep their history.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The standard pair: `production` on `prod-db` into `stage` on
    /// `staging-db`, owned by `stage`.
    pub fn pair(&self) -> PairSpec {
        self.pair_from("production")
    }

    /// The standard pair, from another source database.
    pub fn pair_from(&self, source_db: &str) -> PairSpec {
        PairSpec::new(
            self.prod.target(),
            source_db,
            self.staging().target(),
            "stage",
            "stage",
        )
    }

    /// What `agent` says about itself to controller `ops`.
    pub async fn info(&self, agent: &FleetAgent) -> Result<pb::InfoResponse, ClientError> {
        stagesync_controller::status::info(self.tls(), &agent.target()).await
    }

    /// Writes the plan `stagesync.toml` into [`dir`](Self::dir): the
    /// agents' endpoints, then the `[controller]` table (controller `ops`
    /// and the PKI's directory) and `body`, which may go on with more
    /// controller keys before its own tables.
    pub fn write_plan(&self, body: &str) -> PathBuf {
        let mut agents = format!("prod-db = {{ endpoint = \"{}\" }}\n", self.prod.addr());
        if let Some(s) = &self.staging {
            agents += &format!("staging-db = {{ endpoint = \"{}\" }}\n", s.addr());
        }
        let text = format!(
            "[agents]\n{agents}\n[controller]\nname = \"ops\"\ncerts_dir = {:?}\n{body}",
            self.pki.dir()
        );
        let path = self.dir.path().join("stagesync.toml");
        std::fs::write(&path, text).expect("writing the plan");
        path
    }

    /// `program` (the `stagesync` binary) with no plan from the
    /// environment and, with an S3 server, the fleet's AWS files instead of
    /// any credentials from the environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(program);
        c.env_remove("STAGESYNC_PLAN").kill_on_drop(true);
        if self.s3.is_some() {
            let (config, credentials) = self.aws_files();
            c.env("AWS_CONFIG_FILE", config)
                .env("AWS_SHARED_CREDENTIALS_FILE", credentials)
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env_remove("AWS_PROFILE");
        }
        c
    }

    /// Every database on the destination, by name.
    pub async fn dest_databases(&self) -> Vec<String> {
        self.dst_query("SELECT datname::text FROM pg_database ORDER BY 1")
            .await
    }

    /// The destination's databases that stagesync made.
    pub async fn stagesync_databases(&self) -> Vec<String> {
        self.dst_query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'stagesync%' ORDER BY 1",
        )
        .await
    }

    async fn dst_query(&self, sql: &str) -> Vec<String> {
        let c = self.dst().client("postgres").await.expect("connecting");
        c.query(sql, &[])
            .await
            .expect("listing databases")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// What `stage` holds now becomes what [`assert_untouched`](Self::assert_untouched)
    /// compares with (after a refresh that was meant to change it).
    /// The previous database it keeps for a rollback is expected from then on.
    pub async fn remember_stage(&mut self) {
        self.before = content_hashes(self.dst(), "stage").await.unwrap();
        self.kept = self.stagesync_databases().await;
    }

    /// The live `stage` is as it was when the fleet was built, and nothing
    /// of any job is left: no stagesync database, no `pg_dump` or
    /// `pg_restore` on either cluster, no job directory in either agent's
    /// work directory. The agents clean up after a job has ended, so this
    /// waits for that.
    pub async fn assert_untouched(&self) {
        assert_eq!(
            content_hashes(self.dst(), "stage").await.unwrap(),
            self.before,
            "live database changed"
        );
        eventually("nothing left behind", async || {
            let dbs = self.stagesync_databases().await;
            let procs: Vec<u32> = [&self.src, self.dst()]
                .iter()
                .flat_map(|c| tool_processes(c))
                .collect();
            let dirs: Vec<PathBuf> = [&self.prod, self.staging()]
                .iter()
                .map(|a| a.work_dir().join("jobs"))
                .filter(|d| std::fs::read_dir(d).is_ok_and(|mut r| r.next().is_some()))
                .collect();
            if dbs == self.kept && procs.is_empty() && dirs.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "databases {dbs:?}, processes {procs:?}, work dirs {dirs:?}"
                ))
            }
        })
        .await;
    }
}
