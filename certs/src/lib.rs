//! stagesync's fleet PKI and mutual-TLS plumbing.
//!
//! - [`identity`]: the one URI SAN every stagesync certificate carries
//!   (`spiffe://<trust-domain>/<agent|controller>/<name>`).
//! - [`pki`]: making a fleet CA and issuing leaf certificates (rcgen).
//! - [`revoke`]: the fleet's revocation list (`crl.pem` beside the CA).
//! - [`tls`]: rustls server and client configurations (TLS 1.3, client
//!   certificates required) that re-read their files when they change.
//! - [`channel`]: dialing an agent over mutual TLS with an identity check.

#![forbid(unsafe_code)]

pub mod channel;
pub mod identity;
pub mod pki;
pub mod revoke;
pub mod tls;

pub use identity::{Identity, IdentityError, Kind};
pub use tls::{ReloadingClientConfig, ReloadingServerConfig, TlsError, TlsFiles};

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "stagesync";
