//! Controller-side agent clients, and errors an operator can act on.

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;

use stagesync_certs::channel::CONNECT_TIMEOUT;
pub use stagesync_certs::channel::{AgentTarget, ClientTls, StaticClientTls, WrongPeer};
use stagesync_proto::AgentClient;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{target}: {message}")]
    Unreachable { target: String, message: String },
    #[error("{target}: {message}")]
    Refused {
        target: String,
        code: tonic::Code,
        message: String,
    },
    #[error("{0}: bad agent address; use HOST:PORT, e.g. 10.0.0.5:7443 or db1.example.com:7443")]
    BadAddress(String),
}

/// Opens a client for an agent (lazily connected: the first call makes
/// the connection, and its errors go through [`explain`]).
pub async fn connect<T: ClientTls>(
    tls: Arc<T>,
    target: &AgentTarget,
) -> Result<AgentClient<Channel>, ClientError> {
    let channel =
        stagesync_certs::channel::channel(tls, target).map_err(|e| ClientError::BadAddress(e.0))?;
    Ok(AgentClient::new(channel))
}

/// Whether the agent made this status itself (it marks those), rather than
/// the transport failing on the way.
fn is_agents_own(status: &tonic::Status) -> bool {
    status
        .metadata()
        .contains_key(stagesync_proto::AGENT_ERROR_KEY)
}

/// Turns a failed call into an error that says what happened and what to do.
pub fn explain(target: &AgentTarget, status: &tonic::Status) -> ClientError {
    let label = target.label();
    // These codes are the agent's own answer, with its own explanation.
    if matches!(
        status.code(),
        tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
            | tonic::Code::AlreadyExists
    ) || is_agents_own(status)
    {
        return ClientError::Refused {
            target: label,
            code: status.code(),
            message: status.message().to_string(),
        };
    }
    let chain = chain_text(status);
    let message = diagnose(target, status, &chain).unwrap_or_else(|| {
        if chain.is_empty() {
            format!("{}: {}", code_name(status.code()), status.message())
        } else {
            chain
        }
    });
    ClientError::Unreachable {
        target: label,
        message,
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// Every error in the source chain, including the payload of `io::Error`s.
fn walk<'a>(top: &'a (dyn StdError + 'static), out: &mut Vec<&'a (dyn StdError + 'static)>) {
    let mut cur = Some(top);
    while let Some(e) = cur {
        out.push(e);
        if let Some(ioe) = e.downcast_ref::<io::Error>()
            && let Some(inner) = ioe.get_ref()
        {
            walk(inner, out);
            return;
        }
        cur = e.source();
    }
}

fn chain_text(status: &tonic::Status) -> String {
    let mut all = Vec::new();
    walk(status, &mut all);
    let mut parts: Vec<String> = Vec::new();
    for e in all.iter().skip(1) {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn diagnose(target: &AgentTarget, status: &tonic::Status, chain: &str) -> Option<String> {
    let mut all = Vec::new();
    walk(status, &mut all);
    for e in &all {
        if let Some(w) = e.downcast_ref::<WrongPeer>() {
            return Some(w.to_string());
        }
        if let Some(r) = e.downcast_ref::<rustls::Error>()
            && let Some(m) = tls_advice(r)
        {
            return Some(m);
        }
        if let Some(ioe) = e.downcast_ref::<io::Error>() {
            match ioe.kind() {
                io::ErrorKind::ConnectionRefused => {
                    return Some(format!(
                        "connection refused: nothing listens at {}; is stagesync-agent running there (systemctl status stagesync-agent)?",
                        target.address
                    ));
                }
                io::ErrorKind::TimedOut => {
                    return Some(format!(
                        "no answer from {} within {} s: check the address, the agent and any firewall",
                        target.address,
                        CONNECT_TIMEOUT.as_secs()
                    ));
                }
                _ => {}
            }
        }
    }
    // Alerts sometimes arrive only as text (through h2's own error type).
    for (needle, advice) in ALERTS {
        if chain.contains(needle) {
            return Some((*advice).to_string());
        }
    }
    if chain.contains("close_notify")
        || chain.contains("connection reset")
        || chain.contains("Connection reset")
        || chain.contains("broken pipe")
    {
        return Some(format!(
            "the connection to {} dropped: the agent stopped or crashed, or the network failed",
            target.address
        ));
    }
    if chain.contains("timed out") || status.message().contains("timed out") {
        return Some(format!(
            "no answer from {} within {} s: check the address, the agent and any firewall",
            target.address,
            CONNECT_TIMEOUT.as_secs()
        ));
    }
    None
}

const ALERTS: &[(&str, &str)] = &[
    (
        "CertificateRevoked",
        "the agent refused our certificate: it was revoked (the fleet's crl.pem names it); use a newly issued one",
    ),
    (
        "CertificateExpired",
        "the agent refused our certificate: it has expired; issue a new one (stagesync certs issue controller NAME --force)",
    ),
    (
        "UnknownCA",
        "the agent refused our certificate: it is not from the fleet CA the agent trusts; use a certificate issued by that CA",
    ),
    (
        "CertificateRequired",
        "the agent requires a client certificate and we sent none; pass the controller's certificate and key",
    ),
    (
        "BadCertificate",
        "the agent refused our certificate as invalid; issue a new one from the fleet CA",
    ),
    (
        "DecryptError",
        "the agent refused our certificate: it is not from the fleet CA the agent trusts (its signature does not verify); use a certificate issued by that CA",
    ),
];

fn tls_advice(e: &rustls::Error) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let text = match e {
        E::AlertReceived(A::CertificateRevoked) => ALERTS[0].1.to_string(),
        E::AlertReceived(A::CertificateExpired) => ALERTS[1].1.to_string(),
        E::AlertReceived(A::UnknownCA) => ALERTS[2].1.to_string(),
        E::AlertReceived(A::CertificateRequired) => ALERTS[3].1.to_string(),
        E::AlertReceived(A::BadCertificate) => ALERTS[4].1.to_string(),
        E::AlertReceived(A::DecryptError) => ALERTS[5].1.to_string(),
        E::InvalidCertificate(C::Revoked) => {
            "the agent's certificate was revoked (the fleet's crl.pem names it): issue it a new one".to_string()
        }
        E::InvalidCertificate(C::UnknownIssuer) | E::InvalidCertificate(C::BadSignature) => {
            "the agent's certificate is not from our fleet CA: check the CA file we use, or reissue the agent's certificate".to_string()
        }
        E::InvalidCertificate(C::Expired) | E::InvalidCertificate(C::ExpiredContext { .. }) => {
            "the agent's certificate has expired: issue it a new one (stagesync certs issue agent NAME --force)".to_string()
        }
        E::InvalidCertificate(C::NotValidForName)
        | E::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            "the agent's certificate does not cover the address we dialed: reissue it with the right --dns/--ip, or dial a name it has".to_string()
        }
        E::InvalidCertificate(other) => format!("the agent's certificate was rejected: {other:?}"),
        E::AlertReceived(other) => format!("the agent ended the TLS handshake: {other:?}"),
        _ => return None,
    };
    Some(text)
}
