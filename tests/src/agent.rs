//! Agents served in-process, configured through a real `agent.toml`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use stagesync_agent::config;
use stagesync_certs::{Identity, Kind, TlsFiles};
use stagesync_controller::AgentTarget;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{PgCluster, TestPki, eventually};

/// What a test agent is and may do.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub name: String,
    pub may_dump: Vec<String>,
    pub may_overwrite: Vec<String>,
    pub controllers: Vec<String>,
    pub peers: Vec<String>,
    /// Where backups may go and come from (`policy.may_backup_to`,
    /// `policy.may_restore_from`).
    pub may_backup_to: Vec<String>,
    pub may_restore_from: Vec<String>,
    /// The `[jobs]` table: limits by key (e.g. `stall_timeout_secs`).
    pub jobs: BTreeMap<String, u64>,
    /// The `[s3]` table: AWS config and credentials files.
    pub s3_files: Option<(PathBuf, PathBuf)>,
    /// TOML appended to the generated file, after every table above.
    pub extra_toml: String,
    /// The `[postgres]` keys instead of the cluster's socket as `postgres`
    /// (`bin_dir` is added).
    pub postgres: Option<String>,
    /// Faults to inject (in-process agents only).
    pub faults: stagesync_agent::config::Faults,
}

impl AgentSpec {
    /// An agent commanded by controller `ops`, with no database rights.
    pub fn new(name: &str) -> Self {
        AgentSpec {
            name: name.to_string(),
            may_dump: Vec::new(),
            may_overwrite: Vec::new(),
            controllers: vec!["ops".into()],
            peers: Vec::new(),
            may_backup_to: Vec::new(),
            may_restore_from: Vec::new(),
            jobs: BTreeMap::new(),
            s3_files: None,
            extra_toml: String::new(),
            postgres: None,
            faults: Default::default(),
        }
    }
}

fn toml_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(", "))
}

/// Writes an `agent.toml` for `spec` into `dir` and returns its path.
pub fn write_config(
    dir: &Path,
    spec: &AgentSpec,
    tls: &TlsFiles,
    cluster: Option<&PgCluster>,
) -> anyhow::Result<PathBuf> {
    let work_dir = dir.join("work");
    std::fs::create_dir_all(&work_dir)?;
    let (socket_dir, port, bin_dir) = match cluster {
        Some(c) => (
            c.socket_dir.clone(),
            c.port,
            format!("bin_dir = {:?}\n", c.bin_dir),
        ),
        None => (dir.to_path_buf(), 5432, String::new()),
    };
    let postgres = match &spec.postgres {
        Some(keys) => format!("{keys}\n"),
        None => format!("socket_dir = {socket_dir:?}\nport = {port}\nuser = \"postgres\"\n"),
    };
    let text = format!(
        r#"name = {name:?}
listen = "127.0.0.1:0"
work_dir = {work:?}

[tls]
ca = {ca:?}
cert = {cert:?}
key = {key:?}

[postgres]
{postgres}{bin_dir}
[policy]
may_dump = {dump}
may_overwrite = {overwrite}
controllers = {controllers}
peers = {peers}
"#,
        name = spec.name,
        work = work_dir,
        ca = tls.ca,
        cert = tls.cert,
        key = tls.key,
        dump = toml_list(&spec.may_dump),
        overwrite = toml_list(&spec.may_overwrite),
        controllers = toml_list(&spec.controllers),
        peers = toml_list(&spec.peers),
    ) + &tables(spec)
        + &spec.extra_toml;
    let path = dir.join("agent.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The rest of `[policy]`, and the `[jobs]` and `[s3]` tables, as far as
/// `spec` has them.
fn tables(spec: &AgentSpec) -> String {
    let mut out = String::new();
    for (key, places) in [
        ("may_backup_to", &spec.may_backup_to),
        ("may_restore_from", &spec.may_restore_from),
    ] {
        if !places.is_empty() {
            out += &format!("{key} = {}\n", toml_list(places));
        }
    }
    if !spec.jobs.is_empty() {
        out += "\n[jobs]\n";
        for (key, value) in &spec.jobs {
            out += &format!("{key} = {value}\n");
        }
    }
    if let Some((config, credentials)) = &spec.s3_files {
        out += &format!("\n[s3]\nconfig_file = {config:?}\ncredentials_file = {credentials:?}\n");
    }
    out
}

/// How a controller dials test agent `name` at `addr`, expecting its identity.
pub fn target_for(name: &str, addr: SocketAddr) -> AgentTarget {
    AgentTarget {
        address: addr.to_string(),
        expected: Some(
            Identity::new(stagesync_certs::DEFAULT_TRUST_DOMAIN, Kind::Agent, name)
                .expect("test agent names are valid"),
        ),
    }
}

/// An agent running as its own process (the real binary), so tests can
/// kill it like a crash would.
pub struct AgentProcess {
    pub name: String,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    child: Option<std::process::Child>,
    pub log: PathBuf,
    /// The network namespace it runs in, if not the test's own.
    netns: Option<String>,
    _dir: TempDir,
}

/// The `stagesync-agent` binary next to the running test binary.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .ok_or_else(|| anyhow::anyhow!("no target directory"))?;
    let bin = dir.join("stagesync-agent");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "stagesync-agent", "--bin", "stagesync-agent"])
            .status()?;
        anyhow::ensure!(status.success(), "building stagesync-agent failed");
    }
    Ok(bin)
}

/// The port an agent in a network namespace of its own listens on (the
/// namespace has nothing else on it).
pub const NETNS_PORT: u16 = 7443;

impl AgentProcess {
    /// Starts the real agent binary for `spec` on a free loopback port and
    /// waits until it is ready.
    pub async fn spawn(
        pki: &TestPki,
        cluster: Option<&PgCluster>,
        spec: AgentSpec,
    ) -> anyhow::Result<Self> {
        let tls = pki.agent(&spec.name)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Self::launch(cluster, spec, tls, addr, None).await
    }

    /// Starts the real agent binary for `spec` inside network namespace
    /// `netns`, listening on `ip` there, with a certificate for `ip`.
    pub async fn spawn_in_netns(
        pki: &TestPki,
        cluster: Option<&PgCluster>,
        spec: AgentSpec,
        netns: &str,
        ip: IpAddr,
    ) -> anyhow::Result<Self> {
        let tls = pki.agent_at(&spec.name, ip)?;
        let addr = SocketAddr::new(ip, NETNS_PORT);
        Self::launch(cluster, spec, tls, addr, Some(netns.to_string())).await
    }

    async fn launch(
        cluster: Option<&PgCluster>,
        spec: AgentSpec,
        tls: TlsFiles,
        addr: SocketAddr,
        netns: Option<String>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("stagesync-agentp-")
            .tempdir()?;
        let config_path = write_config(dir.path(), &spec, &tls, cluster)?;
        let text = std::fs::read_to_string(&config_path)?
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\""));
        std::fs::write(&config_path, text)?;
        let mut p = AgentProcess {
            name: spec.name,
            addr,
            config_path,
            child: None,
            log: dir.path().join("agent.log"),
            netns,
            _dir: dir,
        };
        p.start().await?;
        Ok(p)
    }

    /// (Re)starts the process with the same configuration and waits until
    /// it tells systemd's notify socket that it is ready: its start-up
    /// recovery is done and it accepts calls.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let notify_path = self._dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path)?;
        notify.set_nonblocking(true)?;
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(agent_binary()?);
                c
            }
            None => std::process::Command::new(agent_binary()?),
        };
        let child = command
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let child = self.child.insert(child);
        let (name, log) = (&self.name, &self.log);
        let log_text = || std::fs::read_to_string(log).unwrap_or_default();
        let mut buf = [0u8; 256];
        eventually(format!("agent {name} to be ready"), async || {
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains("READY=1")
            {
                return Ok(Ok(()));
            }
            match child.try_wait() {
                Ok(Some(status)) => Ok(Err(anyhow::anyhow!(
                    "agent {name} exited with {status}: {}",
                    log_text()
                ))),
                _ => Err(log_text()),
            }
        })
        .await
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs the agent and returns how it ended (proof that it died).
    pub fn kill(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut c = self
            .child
            .take()
            .ok_or_else(|| anyhow::anyhow!("not running"))?;
        c.kill()?;
        Ok(c.wait()?)
    }

    pub fn target(&self) -> AgentTarget {
        target_for(&self.name, self.addr)
    }

    /// The agent's work directory.
    pub fn work_dir(&self) -> PathBuf {
        self.config_path
            .parent()
            .map(|d| d.join("work"))
            .unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An agent running inside the test process.
pub struct TestAgent {
    pub name: String,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    pub tls: TlsFiles,
    cancel: CancellationToken,
    handle: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl TestAgent {
    /// Issues a certificate for `spec.name` and serves an agent on 127.0.0.1:0.
    pub async fn start(
        pki: &TestPki,
        cluster: Option<&PgCluster>,
        spec: AgentSpec,
    ) -> anyhow::Result<Self> {
        let tls = pki.agent(&spec.name)?;
        let dir = tempfile::Builder::new()
            .prefix("stagesync-agent-")
            .tempdir()?;
        let config_path = write_config(dir.path(), &spec, &tls, cluster)?;
        let mut cfg = config::load(&config_path)?;
        cfg.faults = spec.faults.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(async move {
            let ready = move || {
                let _ = ready_tx.send(());
            };
            if let Err(e) =
                stagesync_agent::serve_with_ready(listener, cfg, stop.cancelled_owned(), ready)
                    .await
            {
                tracing::error!(error = %e, "test agent failed");
            }
        });
        // Like systemd's READY=1: the start-up recovery is done before a
        // test goes on (a test that stages a crash must not race it).
        tokio::time::timeout(std::time::Duration::from_secs(60), ready_rx)
            .await
            .map_err(|_| anyhow::anyhow!("test agent {} not ready in 60 s", spec.name))?
            .map_err(|_| anyhow::anyhow!("test agent {} failed to start", spec.name))?;
        Ok(TestAgent {
            name: spec.name,
            addr,
            config_path,
            tls,
            cancel,
            handle: Some(handle),
            _dir: dir,
        })
    }

    /// Where a controller dials this agent, expecting its identity.
    pub fn target(&self) -> AgentTarget {
        target_for(&self.name, self.addr)
    }

    /// The agent's work directory.
    pub fn work_dir(&self) -> PathBuf {
        self.config_path
            .parent()
            .map(|d| d.join("work"))
            .unwrap_or_default()
    }

    /// Stops the agent and waits for it to finish.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
