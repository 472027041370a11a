//! Agents served in-process, configured through a real `agent.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use stagesync_agent::config;
use stagesync_certs::{Identity, Kind, TlsFiles};
use stagesync_controller::AgentTarget;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{PgCluster, TestPki};

/// What a test agent is and may do.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub name: String,
    pub may_dump: Vec<String>,
    pub may_overwrite: Vec<String>,
    pub controllers: Vec<String>,
    pub peers: Vec<String>,
    /// TOML appended to the generated file (e.g. a `[jobs]` table).
    pub extra_toml: String,
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
            extra_toml: String::new(),
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
    let text = format!(
        r#"name = {name:?}
listen = "127.0.0.1:0"
work_dir = {work:?}

[tls]
ca = {ca:?}
cert = {cert:?}
key = {key:?}

[postgres]
socket_dir = {sock:?}
port = {port}
user = "postgres"
{bin_dir}
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
        sock = socket_dir,
        dump = toml_list(&spec.may_dump),
        overwrite = toml_list(&spec.may_overwrite),
        controllers = toml_list(&spec.controllers),
        peers = toml_list(&spec.peers),
    ) + &spec.extra_toml;
    let path = dir.join("agent.toml");
    std::fs::write(&path, text)?;
    Ok(path)
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

impl AgentProcess {
    /// Starts the real agent binary for `spec` on a free loopback port and
    /// waits until it accepts connections.
    pub fn spawn(
        pki: &TestPki,
        cluster: Option<&PgCluster>,
        spec: AgentSpec,
    ) -> anyhow::Result<Self> {
        let tls = pki.agent(&spec.name)?;
        let dir = tempfile::Builder::new()
            .prefix("stagesync-agentp-")
            .tempdir()?;
        let config_path = write_config(dir.path(), &spec, &tls, cluster)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let text = std::fs::read_to_string(&config_path)?.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
        std::fs::write(&config_path, text)?;
        let mut p = AgentProcess {
            name: spec.name,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            config_path,
            child: None,
            log: dir.path().join("agent.log"),
            _dir: dir,
        };
        p.start()?;
        Ok(p)
    }

    /// (Re)starts the process with the same configuration.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = std::process::Command::new(agent_binary()?)
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(self.addr).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "agent did not listen: {}",
                self.log_text()
            );
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                anyhow::bail!("agent exited with {status}: {}", self.log_text());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
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
