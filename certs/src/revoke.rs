//! Revocation: the fleet's certificate revocation list, `crl.pem`, beside
//! the CA certificate. The CA signs it; agents and controllers read it with
//! their other TLS files (and again when it changes), so a revoked
//! certificate is refused on the next connection without a restart.
//!
//! The list only grows: each revocation re-signs it with every serial it
//! held plus the new one, and a higher CRL number.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Kind;
use crate::pki::{self, Ca, PkiError};

/// The revocation list's file name, in the directory of the CA certificate.
pub const CRL_FILE: &str = "crl.pem";

/// Where the revocation list of the CA at `ca` is kept.
pub fn crl_path(ca: &Path) -> PathBuf {
    ca.with_file_name(CRL_FILE)
}

/// How long a list stays valid; it is re-signed at every revocation, and
/// nothing here expires a list (an old list only lacks the newest entries).
const VALIDITY_DAYS: i64 = 3650;

/// A serial number without the leading zero bytes DER may add.
fn trimmed(serial: &[u8]) -> Vec<u8> {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    serial[start..].to_vec()
}

/// The serials a revocation list names, and its CRL number.
fn read_list(pem: &[u8], path: &Path) -> Result<(Vec<Vec<u8>>, u64), PkiError> {
    let bad = |reason: String| PkiError::BadCa {
        path: path.to_path_buf(),
        reason,
    };
    let der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem)
        .map_err(|e| bad(format!("not a PEM revocation list: {e}")))?;
    let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
        .map_err(|e| bad(format!("unreadable revocation list: {e}")))?;
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| trimmed(r.raw_serial()))
        .collect();
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n.clone()).ok())
        .unwrap_or(0);
    Ok((serials, number))
}

/// The serials revoked in the list at `path`; none when there is no list.
pub fn revoked_serials(path: &Path) -> Result<Vec<Vec<u8>>, PkiError> {
    match std::fs::read(path) {
        Ok(pem) => Ok(read_list(&pem, path)?.0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(PkiError::Io {
            path: path.to_path_buf(),
            what: "cannot read the revocation list",
            source,
        }),
    }
}

/// Writes the list for the CA in `dir`: every serial already revoked plus
/// `add`. Returns how many serials it holds.
pub fn write_list(dir: &Path, ca: &Ca, add: &[Vec<u8>]) -> Result<usize, PkiError> {
    let path = crl_path(&pki::ca_paths(dir).0);
    let (mut serials, number) = match std::fs::read(&path) {
        Ok(pem) => read_list(&pem, &path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(source) => {
            return Err(PkiError::Io {
                path,
                what: "cannot read the revocation list",
                source,
            });
        }
    };
    for s in add {
        let s = trimmed(s);
        if !serials.contains(&s) {
            serials.push(s);
        }
    }
    let pem = sign(ca, &serials, number + 1)?;
    pki::write_file(&path, pem.as_bytes(), 0o644, true)?;
    Ok(serials.len())
}

fn sign(ca: &Ca, serials: &[Vec<u8>], number: u64) -> Result<String, PkiError> {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(1),
        next_update: now + Duration::days(VALIDITY_DAYS),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, key)?;
    Ok(params.signed_by(&issuer)?.pem()?)
}

/// The serial number of the certificate in `pem`.
pub fn serial_of(pem: &[u8], path: &Path) -> Result<Vec<u8>, PkiError> {
    let bad = |reason: String| PkiError::BadCa {
        path: path.to_path_buf(),
        reason,
    };
    let der = CertificateDer::from_pem_slice(pem)
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| bad(format!("unreadable certificate: {e}")))?;
    Ok(trimmed(cert.raw_serial()))
}

/// `stagesync certs revoke`: revokes the certificate the certs directory
/// holds for `kind` `name`. Returns its path and how many serials the list
/// now holds.
pub fn revoke_leaf(dir: &Path, kind: Kind, name: &str) -> Result<(PathBuf, usize), PkiError> {
    let ca = pki::load_ca(dir)?;
    let (crt, _) = pki::leaf_paths(dir, kind, name);
    let pem = std::fs::read(&crt).map_err(|source| PkiError::Io {
        path: crt.clone(),
        what: "cannot read the certificate to revoke",
        source,
    })?;
    let serial = serial_of(&pem, &crt)?;
    let count = write_list(dir, &ca, &[serial])?;
    Ok((crt, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{LeafRequest, init_dir, issue_into};

    #[test]
    fn a_revoked_serial_stays_in_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_dir(dir.path(), "stagesync", 30, false).unwrap();
        let list = crl_path(&dir.path().join("ca.crt"));
        assert!(
            revoked_serials(&list).unwrap().is_empty(),
            "init writes an empty list"
        );
        let req = LeafRequest::new(Kind::Controller, "ops", 10);
        let (crt, _, _) = issue_into(dir.path(), &ca, &req, false).unwrap();
        let first = serial_of(&std::fs::read(&crt).unwrap(), &crt).unwrap();
        let (_, count) = revoke_leaf(dir.path(), Kind::Controller, "ops").unwrap();
        assert_eq!(count, 1);
        assert_eq!(revoked_serials(&list).unwrap(), vec![first.clone()]);
        // Re-issuing with --force revokes the serial it replaces.
        let req = LeafRequest::new(Kind::Controller, "ci", 10);
        let (crt, _, _) = issue_into(dir.path(), &ca, &req, false).unwrap();
        let second = serial_of(&std::fs::read(&crt).unwrap(), &crt).unwrap();
        issue_into(dir.path(), &ca, &req, true).unwrap();
        let third = serial_of(&std::fs::read(&crt).unwrap(), &crt).unwrap();
        let revoked = revoked_serials(&list).unwrap();
        assert_eq!(revoked, vec![first, second]);
        assert!(!revoked.contains(&third));
    }
}
