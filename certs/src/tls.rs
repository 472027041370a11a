//! rustls configurations for agents and controllers.
//!
//! Both sides speak TLS 1.3 only, present a certificate from the fleet CA and
//! verify the other side's against it. The files are read again on every new
//! connection (they are small) and the configuration is rebuilt only when
//! their bytes changed, so certificates rotate without a restart. A rotation
//! that leaves broken files keeps the last good configuration and logs why.
//!
//! The fleet's revocation list, `crl.pem` beside the CA certificate, is
//! read with them: a certificate it names is refused (a peer's on both
//! sides of every connection) from the next connection on.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{Identity, IdentityError};

/// The three files a fleet member needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read the {what}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in this file ({what})")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{path}: no PEM private key in this file: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{path}: the certificate's identity is unusable: {source}")]
    Identity {
        path: PathBuf,
        source: IdentityError,
    },
    #[error("{cert} and {key}: {reason}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The bytes of the three files, as last read.
#[derive(Clone, PartialEq, Eq)]
struct Snapshot {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    /// The revocation list, when there is one.
    crl: Option<Vec<u8>>,
}

/// Parsed material, shared by the server and client builders.
struct Material {
    roots: RootCertStore,
    crls: Vec<CertificateRevocationListDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
    not_after: i64,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl TlsFiles {
    fn snapshot(&self) -> Result<Snapshot, TlsError> {
        Ok(Snapshot {
            ca: read(&self.ca, "CA certificate")?,
            cert: read(&self.cert, "certificate")?,
            key: read(&self.key, "private key")?,
            crl: self.read_crl()?,
        })
    }

    /// The revocation list beside the CA certificate, if there is one.
    fn read_crl(&self) -> Result<Option<Vec<u8>>, TlsError> {
        let path = crate::revoke::crl_path(&self.ca);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TlsError::Read {
                what: "revocation list",
                path,
                source,
            }),
        }
    }

    fn parse_crls(
        &self,
        snap: &Snapshot,
    ) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
        let Some(bytes) = &snap.crl else {
            return Ok(Vec::new());
        };
        let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::NoCertificate {
                what: "revocation list",
                path: crate::revoke::crl_path(&self.ca),
            })?;
        if crls.is_empty() {
            return Err(TlsError::NoCertificate {
                what: "revocation list",
                path: crate::revoke::crl_path(&self.ca),
            });
        }
        Ok(crls)
    }

    fn parse(&self, snap: &Snapshot) -> Result<Material, TlsError> {
        let certs = |bytes: &[u8], what, path: &Path| {
            let list: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
                .filter_map(Result::ok)
                .collect();
            if list.is_empty() {
                Err(TlsError::NoCertificate {
                    what,
                    path: path.to_path_buf(),
                })
            } else {
                Ok(list)
            }
        };
        let ca_certs = certs(&snap.ca, "CA certificate", &self.ca)?;
        let chain = certs(&snap.cert, "certificate", &self.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&snap.key).map_err(|e| TlsError::BadKey {
            path: self.key.clone(),
            reason: e.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        for ca in ca_certs {
            roots.add(ca).map_err(|e| TlsError::NoCertificate {
                what: match e {
                    rustls::Error::InvalidCertificate(_) => "CA certificate is invalid",
                    _ => "CA certificate",
                },
                path: self.ca.clone(),
            })?;
        }
        let identity = Identity::from_cert_der(&chain[0]).map_err(|source| TlsError::Identity {
            path: self.cert.clone(),
            source,
        })?;
        let not_after = X509Certificate::from_der(&chain[0])
            .map(|(_, c)| c.validity().not_after.timestamp())
            .unwrap_or(i64::MAX);
        Ok(Material {
            roots,
            crls: self.parse_crls(snap)?,
            chain,
            key,
            identity,
            not_after,
        })
    }

    fn config_error(&self, reason: impl std::fmt::Display) -> TlsError {
        TlsError::Config {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason: reason.to_string(),
        }
    }

    fn server_config(&self, m: Material) -> Result<ServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(m.roots), provider())
            .with_crls(m.crls)
            .only_check_end_entity_revocation()
            .build()
            .map_err(|e| self.config_error(format!("CA unusable for client verification: {e}")))?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.config_error(e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(m.chain, m.key)
            .map_err(|e| self.config_error(key_reason(e)))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }

    fn client_config(&self, m: Material) -> Result<ClientConfig, TlsError> {
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(m.roots), provider())
            .with_crls(m.crls)
            .only_check_end_entity_revocation()
            .build()
            .map_err(|e| self.config_error(format!("CA unusable for server verification: {e}")))?;
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.config_error(e))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(m.chain, m.key)
            .map_err(|e| self.config_error(key_reason(e)))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

fn key_reason(e: rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not belong to the certificate".to_string()
        }
        other => other.to_string(),
    }
}

/// A loaded configuration plus what it was built from.
struct Current<C> {
    snapshot: Snapshot,
    /// The files' metadata when last read: while it stays the same, a new
    /// connection costs a `stat` per file, not a read.
    stamp: Stamp,
    identity: Identity,
    config: Arc<C>,
}

/// Size, modification time and inode of each file (None: missing).
type Stamp = Vec<Option<(u64, std::time::SystemTime, u64)>>;

impl TlsFiles {
    fn stamp(&self) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let crl = crate::revoke::crl_path(&self.ca);
        [&self.ca, &self.cert, &self.key, &crl]
            .iter()
            .map(|p| {
                let m = fs::metadata(p).ok()?;
                Some((m.len(), m.modified().ok()?, m.ino()))
            })
            .collect()
    }
}

/// Shared reload logic for server and client configurations.
struct Reloading<C> {
    files: TlsFiles,
    build: fn(&TlsFiles, Material) -> Result<C, TlsError>,
    current: Mutex<Current<C>>,
}

impl<C> Reloading<C> {
    fn load(
        files: TlsFiles,
        build: fn(&TlsFiles, Material) -> Result<C, TlsError>,
    ) -> Result<Self, TlsError> {
        // Stamped before reading: a change in between is seen next time.
        let stamp = files.stamp();
        let snapshot = files.snapshot()?;
        let material = files.parse(&snapshot)?;
        warn_if_expired(&files, &material);
        let identity = material.identity.clone();
        let config = Arc::new(build(&files, material)?);
        Ok(Reloading {
            files,
            build,
            current: Mutex::new(Current {
                stamp,
                snapshot,
                identity,
                config,
            }),
        })
    }

    fn refresh(&self) -> (Arc<C>, Identity) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = self.files.stamp();
        if stamp == cur.stamp {
            return (cur.config.clone(), cur.identity.clone());
        }
        cur.stamp = stamp;
        match self.try_reload(&cur.snapshot) {
            Ok(None) => {}
            Ok(Some((snapshot, identity, config))) => {
                if identity != cur.identity {
                    tracing::warn!(
                        cert = %self.files.cert.display(),
                        old = %cur.identity,
                        new = %identity,
                        "rotated certificate names another identity; keeping the old one"
                    );
                } else {
                    tracing::info!(cert = %self.files.cert.display(), identity = %identity, "certificate files changed; reloaded");
                    cur.snapshot = snapshot;
                    cur.identity = identity;
                    cur.config = config;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate files changed but cannot be used; keeping the previous ones");
            }
        }
        (cur.config.clone(), cur.identity.clone())
    }

    #[allow(clippy::type_complexity)]
    fn try_reload(&self, old: &Snapshot) -> Result<Option<(Snapshot, Identity, Arc<C>)>, TlsError> {
        let snapshot = self.files.snapshot()?;
        if &snapshot == old {
            return Ok(None);
        }
        let material = self.files.parse(&snapshot)?;
        warn_if_expired(&self.files, &material);
        let identity = material.identity.clone();
        let config = Arc::new((self.build)(&self.files, material)?);
        Ok(Some((snapshot, identity, config)))
    }
}

fn warn_if_expired(files: &TlsFiles, m: &Material) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if m.not_after < now {
        tracing::warn!(cert = %files.cert.display(), identity = %m.identity, "this certificate has expired; peers will refuse it: issue a new one");
    }
}

/// The agent's TLS server configuration, re-read when its files change.
pub struct ReloadingServerConfig(Reloading<ServerConfig>);

impl ReloadingServerConfig {
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        Reloading::load(files, TlsFiles::server_config).map(Self)
    }

    /// The configuration to use for the next connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.0.refresh().0
    }

    /// The identity in the currently loaded certificate.
    pub fn identity(&self) -> Identity {
        self.0.refresh().1
    }
}

/// A client configuration (controller or agent dialing a peer), re-read
/// when its files change.
pub struct ReloadingClientConfig(Reloading<ClientConfig>);

impl ReloadingClientConfig {
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        Reloading::load(files, TlsFiles::client_config).map(Self)
    }

    pub fn current(&self) -> Arc<ClientConfig> {
        self.0.refresh().0
    }

    pub fn identity(&self) -> Identity {
        self.0.refresh().1
    }
}

/// The identity of the peer of an established TLS connection.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<Identity, IdentityError> {
    match certs.and_then(|c| c.first()) {
        Some(leaf) => Identity::from_cert_der(leaf),
        None => Err(IdentityError::UriCount(0)),
    }
}
