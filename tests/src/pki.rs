//! A throwaway fleet PKI on disk.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use stagesync_certs::pki::{Ca, LeafRequest};
use stagesync_certs::{Kind, ReloadingClientConfig, TlsFiles};
use tempfile::TempDir;

pub struct TestPki {
    dir: TempDir,
    pub ca: Ca,
}

impl TestPki {
    /// A new CA for trust domain `stagesync`.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_trust_domain(stagesync_certs::DEFAULT_TRUST_DOMAIN)
    }

    pub fn with_trust_domain(td: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("stagesync-pki-")
            .tempdir()?;
        let ca = Ca::generate(td, 30)?;
        std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem)?;
        std::fs::write(dir.path().join("ca.key"), &ca.key_pem)?;
        Ok(TestPki { dir, ca })
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// An agent certificate for 127.0.0.1 and localhost.
    pub fn agent(&self, name: &str) -> anyhow::Result<TlsFiles> {
        let mut req = LeafRequest::new(Kind::Agent, name, 30);
        req.ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        req.dns.push("localhost".into());
        self.issue(&req, name)
    }

    /// An agent certificate for one IP address (a test host in a namespace).
    pub fn agent_at(&self, name: &str, ip: IpAddr) -> anyhow::Result<TlsFiles> {
        let mut req = LeafRequest::new(Kind::Agent, name, 30);
        req.ips.push(ip);
        self.issue(&req, name)
    }

    pub fn controller(&self, name: &str) -> anyhow::Result<TlsFiles> {
        self.issue(&LeafRequest::new(Kind::Controller, name, 30), name)
    }

    /// Issues `req` into files named after `file_stem`.
    pub fn issue(&self, req: &LeafRequest, file_stem: &str) -> anyhow::Result<TlsFiles> {
        let leaf = self.ca.issue(req)?;
        let cert = self
            .dir
            .path()
            .join(format!("{}-{file_stem}.crt", req.kind));
        let key = self
            .dir
            .path()
            .join(format!("{}-{file_stem}.key", req.kind));
        std::fs::write(&cert, &leaf.cert_pem)?;
        std::fs::write(&key, &leaf.key_pem)?;
        Ok(TlsFiles {
            ca: self.ca_path(),
            cert,
            key,
        })
    }

    /// A controller's client configuration.
    pub fn controller_tls(&self, name: &str) -> anyhow::Result<Arc<ReloadingClientConfig>> {
        Ok(Arc::new(ReloadingClientConfig::load(
            self.controller(name)?,
        )?))
    }
}
