//! An S3-API server for tests: `s3s-fs` over a temporary directory, served
//! inside the test process on loopback, plus AWS profile files to reach it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tempfile::TempDir;

pub struct S3Server {
    pub addr: SocketAddr,
    /// Buckets are directories under this root, objects files inside them.
    pub root: PathBuf,
    _dir: TempDir,
}

impl S3Server {
    /// Serves a fresh directory, accepting one access key.
    pub async fn start(access_key: &str, secret_key: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("stagesync-s3-").tempdir()?;
        let fs = s3s_fs::FileSystem::new(dir.path())
            .map_err(|e| anyhow::anyhow!("s3s-fs over {}: {e:?}", dir.path().display()))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let http = Builder::new(TokioExecutor::new());
            while let Ok((socket, _)) = listener.accept().await {
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        Ok(S3Server {
            addr,
            root: dir.path().to_path_buf(),
            _dir: dir,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes an object straight into the served directory.
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) -> anyhow::Result<()> {
        let path = self.root.join(bucket).join(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, body)?;
        Ok(())
    }

    /// Every object of a bucket with its bytes (hidden bookkeeping files of
    /// the server left out).
    pub fn objects(&self, bucket: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
        fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                if p.is_dir() {
                    walk(base, &p, out);
                } else if let Ok(bytes) = std::fs::read(&p) {
                    let key = p
                        .strip_prefix(base)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned();
                    out.insert(key, bytes);
                }
            }
        }
        let mut out = std::collections::BTreeMap::new();
        let base = self.root.join(bucket);
        walk(&base, &base, &mut out);
        out
    }
}

/// AWS config and credentials files with one profile, as users write them.
pub fn profile_files(
    dir: &Path,
    profile: &str,
    access_key: &str,
    secret_key: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let credentials = dir.join("credentials");
    let config = dir.join("config");
    std::fs::write(
        &credentials,
        format!(
            "[{profile}]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"
        ),
    )?;
    std::fs::write(
        &config,
        format!("[profile {profile}]\nregion = us-east-1\n"),
    )?;
    Ok((config, credentials))
}
