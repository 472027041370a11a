//! Dialing agents over mutual TLS.
//!
//! The controller verifies the agent's certificate against the fleet CA and
//! the address it dialed, then checks that the certificate names the agent
//! it expected. Failures are turned into messages an operator can act on.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use stagesync_certs::{Identity, ReloadingClientConfig};
use stagesync_proto::AgentClient;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long to wait for TCP and TLS to come up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a connection gets its TLS client configuration. The fleet's
/// [`ReloadingClientConfig`] re-reads rotated files; tests can pass a fixed
/// configuration (for example one without a client certificate).
pub trait ClientTls: Send + Sync + 'static {
    fn client_config(&self) -> Arc<rustls::ClientConfig>;
}

impl ClientTls for ReloadingClientConfig {
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.current()
    }
}

/// A fixed client configuration.
pub struct StaticClientTls(pub Arc<rustls::ClientConfig>);

impl ClientTls for StaticClientTls {
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.0.clone()
    }
}

/// An agent to dial, and who it should turn out to be.
#[derive(Clone, Debug)]
pub struct AgentTarget {
    /// `host:port`, `ip:port` or `[v6]:port`.
    pub address: String,
    /// The identity the agent's certificate must carry, when known.
    pub expected: Option<Identity>,
}

impl AgentTarget {
    /// A short name for messages: the expected agent name, or the address.
    pub fn label(&self) -> String {
        match &self.expected {
            Some(id) => format!("agent {} at {}", id.name, self.address),
            None => format!("agent at {}", self.address),
        }
    }
}

/// The certificate at the far end names someone else.
#[derive(Debug)]
pub struct WrongPeer {
    pub address: String,
    pub expected: Identity,
    pub actual: Result<Identity, String>,
}

impl fmt::Display for WrongPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.actual {
            Ok(actual) => write!(
                f,
                "{} answered as {actual}, not the expected {}: check the agent's address",
                self.address, self.expected
            ),
            Err(e) => write!(
                f,
                "{} presented a certificate without a stagesync identity ({e})",
                self.address
            ),
        }
    }
}

impl StdError for WrongPeer {}

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

fn split_host_port(address: &str) -> Option<(String, u16)> {
    if let Ok(sa) = address.parse::<std::net::SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    if host.is_empty() || host.contains(['/', ' ']) {
        return None;
    }
    Some((host.trim_matches(['[', ']']).to_string(), port))
}

/// Opens a gRPC channel to an agent (lazily verified: the first call makes
/// the connection, and its errors go through [`explain`]).
pub async fn connect<T: ClientTls>(
    tls: Arc<T>,
    target: &AgentTarget,
) -> Result<AgentClient<Channel>, ClientError> {
    let (host, port) = split_host_port(&target.address)
        .ok_or_else(|| ClientError::BadAddress(target.address.clone()))?;
    let endpoint = Endpoint::from_shared(format!("http://{}", target.address))
        .map_err(|_| ClientError::BadAddress(target.address.clone()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let address = target.address.clone();
    let expected = target.expected.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let tls = tls.clone();
        let host = host.clone();
        let address = address.clone();
        let expected = expected.clone();
        async move {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls_stream = tokio_rustls::TlsConnector::from(tls.client_config())
                .connect(name, tcp)
                .await?;
            if let Some(expected) = expected {
                let actual =
                    stagesync_certs::tls::peer_identity(tls_stream.get_ref().1.peer_certificates())
                        .map_err(|e| e.to_string());
                if actual.as_ref() != Ok(&expected) {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        WrongPeer {
                            address,
                            expected,
                            actual,
                        },
                    ));
                }
            }
            Ok::<_, io::Error>(TokioIo::new(tls_stream))
        }
    });
    let channel = endpoint.connect_with_connector_lazy(connector);
    Ok(AgentClient::new(channel))
}

/// Turns a failed call into an error that says what happened and what to do.
pub fn explain(target: &AgentTarget, status: &tonic::Status) -> ClientError {
    let label = target.label();
    if matches!(
        status.code(),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
    ) {
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
        E::AlertReceived(A::CertificateExpired) => ALERTS[0].1.to_string(),
        E::AlertReceived(A::UnknownCA) => ALERTS[1].1.to_string(),
        E::AlertReceived(A::CertificateRequired) => ALERTS[2].1.to_string(),
        E::AlertReceived(A::BadCertificate) => ALERTS[3].1.to_string(),
        E::AlertReceived(A::DecryptError) => ALERTS[4].1.to_string(),
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
