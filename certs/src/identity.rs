//! Identities of fleet members, as carried in certificates.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a fleet member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Agent,
    Controller,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Controller => "controller",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spiffe://<trust_domain>/<kind>/<name>`: who a certificate belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub kind: Kind,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error(
        "invalid name {0:?}: use 1 to 63 characters from a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
    )]
    BadName(String),
    #[error(
        "invalid trust domain {0:?}: use lowercase letters, digits, '-', '_' and '.' (for example \"stagesync\" or \"example.com\")"
    )]
    BadTrustDomain(String),
    #[error(
        "{0:?} is not a stagesync identity: expected spiffe://<trust-domain>/agent/<name> or spiffe://<trust-domain>/controller/<name>"
    )]
    BadUri(String),
    #[error("the certificate could not be parsed: {0}")]
    BadCertificate(String),
    #[error(
        "the certificate carries {0} spiffe:// URI names; a stagesync certificate carries exactly one"
    )]
    UriCount(usize),
}

/// Checks a member name (agent or controller).
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadName(name.to_string()))
    }
}

/// Checks a trust domain (the host part of the SPIFFE ID).
pub fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadTrustDomain(td.to_string()))
    }
}

impl Identity {
    pub fn new(trust_domain: &str, kind: Kind, name: &str) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        validate_name(name)?;
        Ok(Identity {
            trust_domain: trust_domain.to_string(),
            kind,
            name: name.to_string(),
        })
    }

    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// Reads the single stagesync URI SAN of a DER certificate.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let uris = spiffe_uris(der)?;
        match uris.as_slice() {
            [one] => one.parse(),
            other => Err(IdentityError::UriCount(other.len())),
        }
    }
}

/// All `spiffe://` URI SANs of a DER certificate.
pub fn spiffe_uris(der: &[u8]) -> Result<Vec<String>, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && uri.starts_with("spiffe://")
            {
                uris.push(uri.to_string());
            }
        }
    }
    Ok(uris)
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/{}/{}",
            self.trust_domain, self.kind, self.name
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdentityError::BadUri(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(td), Some(kind), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let kind = match kind {
            "agent" => Kind::Agent,
            "controller" => Kind::Controller,
            _ => return Err(bad()),
        };
        Identity::new(td, kind, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let id: Identity = "spiffe://stagesync/agent/prod-db".parse().unwrap();
        assert_eq!(id.kind, Kind::Agent);
        assert_eq!(id.name, "prod-db");
        assert_eq!(id.to_string(), "spiffe://stagesync/agent/prod-db");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "https://stagesync/agent/x",
            "spiffe://stagesync/agent",
            "spiffe://stagesync/robot/x",
            "spiffe://stagesync/agent/x/y",
            "spiffe://Stage/agent/x",
            "spiffe://stagesync/agent/-x",
            "spiffe://stagesync/agent/",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("prod-db.1").is_ok());
        assert!(validate_name("Prod").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"a".repeat(64)).is_err());
    }
}
