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
    let (socket_dir, port) = match cluster {
        Some(c) => (c.socket_dir.clone(), c.port),
        None => (dir.to_path_buf(), 5432),
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
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text)?;
    Ok(path)
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
        let cfg = config::load(&config_path)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let handle = tokio::spawn(async move {
            if let Err(e) = stagesync_agent::serve(listener, cfg, stop.cancelled_owned()).await {
                tracing::error!(error = %e, "test agent failed");
            }
        });
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
        AgentTarget {
            address: self.addr.to_string(),
            expected: Some(
                Identity::new(
                    stagesync_certs::DEFAULT_TRUST_DOMAIN,
                    Kind::Agent,
                    &self.name,
                )
                .expect("test agent names are valid"),
            ),
        }
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
