//! The fleet CA and leaf certificates.
//!
//! A certs directory holds `ca.crt`/`ca.key` and one `<kind>-<name>.crt`/
//! `.key` pair per member. Keys are written with mode 0600 and are never
//! overwritten unless the caller asks for it.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, string::Ia5String,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{self, Identity, Kind};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "{0} already exists; pass --force to replace it (the old certificate is revoked: copy the CA's crl.pem to every agent and controller)"
    )]
    Exists(PathBuf),
    #[error("{0}: no CA here; run `stagesync certs init --dir {dir}` first", dir = .0.parent().map(|p| p.display().to_string()).unwrap_or_default())]
    NoCa(PathBuf),
    #[error("{path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("invalid DNS name {0:?}")]
    BadDns(String),
    #[error(
        "an agent certificate needs the names controllers and peers dial it by: add --dns HOST and/or --ip ADDRESS"
    )]
    AgentNeedsAddress,
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A CA held in memory.
pub struct Ca {
    pub trust_domain: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A leaf certificate and its key, PEM-encoded.
pub struct Leaf {
    pub identity: Identity,
    pub cert_pem: String,
    pub key_pem: String,
}

/// What goes into a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafRequest {
    pub kind: Kind,
    pub name: String,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafRequest {
    /// A request valid from a minute ago for `days` days.
    pub fn new(kind: Kind, name: &str, days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafRequest {
            kind,
            name: name.to_string(),
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::days(days),
        }
    }
}

impl Ca {
    /// A new self-signed CA for `trust_domain`, valid for `days` days.
    pub fn generate(trust_domain: &str, days: i64) -> Result<Ca, PkiError> {
        identity::validate_trust_domain(trust_domain)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "stagesync");
        dn.push(
            DnType::CommonName,
            format!("stagesync fleet CA ({trust_domain})"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // The CA names its trust domain, so `issue` needs no extra flag.
        params.subject_alt_names = vec![SanType::URI(ia5(&format!("spiffe://{trust_domain}"))?)];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(1);
        params.not_after = now + Duration::days(days);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            trust_domain: trust_domain.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads a CA back from its PEM files' contents.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("not a PEM certificate: {e}"))?;
        let td = ca_trust_domain(&der)?;
        KeyPair::from_pem(key_pem).map_err(|e| format!("the CA key is unreadable: {e}"))?;
        Ok(Ca {
            trust_domain: td,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// Issues a leaf certificate signed by this CA.
    pub fn issue(&self, req: &LeafRequest) -> Result<Leaf, PkiError> {
        let identity = Identity::new(&self.trust_domain, req.kind, &req.name)?;
        if req.kind == Kind::Agent && req.dns.is_empty() && req.ips.is_empty() {
            return Err(PkiError::AgentNeedsAddress);
        }
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;

        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "stagesync");
        dn.push(DnType::CommonName, format!("{} {}", req.kind, req.name));
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match req.kind {
            // Agents serve controllers and also dial their peers.
            Kind::Agent => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Kind::Controller => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        let mut sans = vec![SanType::URI(ia5(&identity.uri())?)];
        for dns in &req.dns {
            let name =
                Ia5String::try_from(dns.as_str()).map_err(|_| PkiError::BadDns(dns.clone()))?;
            if dns.is_empty() || dns.contains(['/', ' ', ':']) {
                return Err(PkiError::BadDns(dns.clone()));
            }
            sans.push(SanType::DnsName(name));
        }
        for ip in &req.ips {
            sans.push(SanType::IpAddress(*ip));
        }
        params.subject_alt_names = sans;
        params.not_before = req.not_before;
        params.not_after = req.not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Leaf {
            identity,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn ia5(s: &str) -> Result<Ia5String, PkiError> {
    Ia5String::try_from(s).map_err(PkiError::Rcgen)
}

/// The trust domain a CA certificate names in its `spiffe://<td>` URI SAN.
pub fn ca_trust_domain(der: &[u8]) -> Result<String, String> {
    let uris = identity::spiffe_uris(der).map_err(|e| e.to_string())?;
    let [uri] = uris.as_slice() else {
        return Err(
            "not a stagesync CA: it should name its trust domain as one spiffe:// URI".to_string(),
        );
    };
    let td = uri.trim_start_matches("spiffe://").trim_end_matches('/');
    identity::validate_trust_domain(td).map_err(|e| e.to_string())?;
    Ok(td.to_string())
}

use rustls::pki_types::pem::PemObject;

/// File names inside a certs directory.
pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.crt"), dir.join("ca.key"))
}

pub fn leaf_paths(dir: &Path, kind: Kind, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{kind}-{name}.crt")),
        dir.join(format!("{kind}-{name}.key")),
    )
}

/// `stagesync certs init`: writes a new CA into `dir`.
pub fn init_dir(dir: &Path, trust_domain: &str, days: i64, force: bool) -> Result<Ca, PkiError> {
    let (crt, key) = ca_paths(dir);
    refuse_existing(&key, force)?;
    let ca = Ca::generate(trust_domain, days)?;
    create_dir(dir)?;
    write_file(&key, ca.key_pem.as_bytes(), 0o600, force)?;
    write_file(&crt, ca.cert_pem.as_bytes(), 0o644, true)?;
    // A new CA revokes nothing: a list of its own, empty (a forced init
    // replaces the old CA's list with it).
    let _ = std::fs::remove_file(crate::revoke::crl_path(&crt));
    crate::revoke::write_list(dir, &ca, &[])?;
    Ok(ca)
}

/// Loads the CA of a certs directory.
pub fn load_ca(dir: &Path) -> Result<Ca, PkiError> {
    let (crt, key) = ca_paths(dir);
    if !crt.exists() {
        return Err(PkiError::NoCa(crt));
    }
    let cert_pem = read(&crt, "cannot read the CA certificate")?;
    let key_pem = read(&key, "cannot read the CA key")?;
    Ca::from_pem(&cert_pem, &key_pem).map_err(|reason| PkiError::BadCa { path: crt, reason })
}

/// `stagesync certs issue`: writes a leaf certificate and key into `dir`.
pub fn issue_into(
    dir: &Path,
    ca: &Ca,
    req: &LeafRequest,
    force: bool,
) -> Result<(PathBuf, PathBuf, Leaf), PkiError> {
    let (crt, key) = leaf_paths(dir, req.kind, &req.name);
    refuse_existing(&key, force)?;
    let leaf = ca.issue(req)?;
    create_dir(dir)?;
    // The certificate this one replaces stops working: its serial is
    // revoked before the new files are written.
    if let Ok(old) = fs::read(&crt) {
        let serial = crate::revoke::serial_of(&old, &crt)?;
        crate::revoke::write_list(dir, ca, &[serial])?;
    }
    write_file(&key, leaf.key_pem.as_bytes(), 0o600, force)?;
    write_file(&crt, leaf.cert_pem.as_bytes(), 0o644, true)?;
    Ok((crt, key, leaf))
}

fn refuse_existing(key: &Path, force: bool) -> Result<(), PkiError> {
    if key.exists() && !force {
        return Err(PkiError::Exists(key.to_path_buf()));
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        what: "cannot create the directory",
        source,
    })
}

fn read(path: &Path, what: &'static str) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        what,
        source,
    })
}

/// Writes through a temporary file and a rename, so a reader never sees half a
/// file and a key never exists with looser permissions than `mode`.
pub(crate) fn write_file(
    path: &Path,
    data: &[u8],
    mode: u32,
    replace: bool,
) -> Result<(), PkiError> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| PkiError::Io { path, what, source }
    };
    if !replace && path.exists() {
        return Err(PkiError::Exists(path.to_path_buf()));
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("cannot create"))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("cannot set permissions"))?;
    file.write_all(data).map_err(io("cannot write"))?;
    file.sync_all().map_err(io("cannot write"))?;
    fs::rename(&tmp, path).map_err(io("cannot move into place"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_carries_one_identity() {
        let ca = Ca::generate("example.org", 30).unwrap();
        let mut req = LeafRequest::new(Kind::Agent, "prod-db", 10);
        req.dns.push("db1.example.org".into());
        let leaf = ca.issue(&req).unwrap();
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let id = Identity::from_cert_der(&der).unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/agent/prod-db");
    }

    #[test]
    fn agent_without_address_is_refused() {
        let ca = Ca::generate("stagesync", 30).unwrap();
        let req = LeafRequest::new(Kind::Agent, "db", 10);
        assert!(matches!(ca.issue(&req), Err(PkiError::AgentNeedsAddress)));
    }

    #[test]
    fn keys_are_private_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_dir(dir.path(), "stagesync", 30, false).unwrap();
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            init_dir(dir.path(), "stagesync", 30, false),
            Err(PkiError::Exists(_))
        ));
        let req = LeafRequest::new(Kind::Controller, "ops", 10);
        issue_into(dir.path(), &ca, &req, false).unwrap();
        assert!(matches!(
            issue_into(dir.path(), &ca, &req, false),
            Err(PkiError::Exists(_))
        ));
        issue_into(dir.path(), &ca, &req, true).unwrap();
        let loaded = load_ca(dir.path()).unwrap();
        assert_eq!(loaded.trust_domain, "stagesync");
    }
}
