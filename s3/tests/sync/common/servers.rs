//! Real S3-API servers for the tests: `s3s-fs` inside the test process and
//! `moto_server` as a child process, both on loopback only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tempfile::TempDir;
use tokio::net::TcpListener;

/// Access keys of the two accounts the tests use.
pub const KEYS_A: (&str, &str) = ("AKIASTAGESYNCA", "secret-a-0123456789");
pub const KEYS_B: (&str, &str) = ("AKIASTAGESYNCB", "secret-b-0123456789");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    S3sFs,
    Moto,
}

/// A running server. Dropping it stops an in-process server with its
/// runtime; the shared moto process outlives tests (see [`moto`]).
pub struct Server {
    pub endpoint: String,
    pub addr: SocketAddr,
    pub keys: (&'static str, &'static str),
    _dir: Option<TempDir>,
}

impl Server {
    /// Where an in-process server keeps its buckets (one folder each).
    pub fn root(&self) -> Option<&std::path::Path> {
        self._dir.as_ref().map(|d| d.path())
    }
}

/// An `s3s-fs` server over a fresh temp dir, accepting only `keys`.
pub async fn s3s_fs(keys: (&'static str, &'static str)) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let fs = s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs root");
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(keys.0, keys.1));
    let service = builder.build();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Server {
        endpoint: format!("http://{addr}"),
        addr,
        keys,
        _dir: Some(dir),
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Starts `moto_server` on a free loopback port. It runs under a small
/// shell that kills it when our end of its stdin closes, which happens when
/// the test process exits, however it exits.
pub fn start_moto(extra_env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let port = free_port();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "moto_server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; read _; kill $m"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    for (k, v) in extra_env {
        command.env(k, v);
    }
    let child = command
        .spawn()
        .expect("start moto_server (pip install 'moto[server]')");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..300 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return (child, addr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_moto(child);
    panic!("moto_server did not start on {addr}");
}

/// Closes the watchdog's stdin, so the shell kills moto, then reaps it.
pub fn stop_moto(mut child: Child) {
    drop(child.stdin.take());
    let _ = child.wait();
}

/// One moto server shared by every test in this binary; tests use their
/// own buckets. moto does not check credentials by default, so it takes
/// both accounts' keys.
pub fn moto() -> Server {
    static MOTO: OnceLock<(std::sync::Mutex<Child>, SocketAddr)> = OnceLock::new();
    let (_, addr) = MOTO.get_or_init(|| {
        let (child, addr) = start_moto(&[]);
        (std::sync::Mutex::new(child), addr)
    });
    Server {
        endpoint: format!("http://{addr}"),
        addr: *addr,
        keys: KEYS_A,
        _dir: None,
    }
}

pub async fn start(backend: Backend) -> Server {
    match backend {
        Backend::S3sFs => s3s_fs(KEYS_A).await,
        Backend::Moto => moto(),
    }
}

/// A temp dir with AWS config and credentials files, as users write them.
pub struct Profiles {
    pub dir: TempDir,
}

impl Profiles {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let credentials = format!(
            "[prod]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n\
             [stage]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n\
             [wrong]\naws_access_key_id = AKIAWRONGWRONG\naws_secret_access_key = not-the-secret\n",
            KEYS_A.0, KEYS_A.1, KEYS_B.0, KEYS_B.1
        );
        std::fs::write(dir.path().join("credentials"), credentials).expect("write credentials");
        let config = "[profile prod]\nregion = us-east-1\n\n[profile stage]\nregion = eu-west-1\n\n[profile wrong]\nregion = us-east-1\n";
        std::fs::write(dir.path().join("config"), config).expect("write config");
        Profiles { dir }
    }

    pub fn paths(&self) -> stagesync_s3::ProfileFilePaths {
        stagesync_s3::ProfileFilePaths {
            config: Some(self.path("config")),
            credentials: Some(self.path("credentials")),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
