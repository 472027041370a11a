//! Dialing agents over mutual TLS (used by the controller, and by agents
//! pushing a dump to their peer).
//!
//! The caller verifies the agent's certificate against the fleet CA and the
//! address it dialed, then checks that the certificate names the agent it
//! expected ([`WrongPeer`] otherwise).

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{Identity, ReloadingClientConfig};

/// How long to wait for TCP and TLS to come up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings find a dead peer (a cut link sends no FIN) within
/// interval + timeout.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 flow-control windows: large enough that one dump stream keeps a
/// fast link busy (window / round-trip time = throughput), small enough to
/// bound memory per stream.
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// The TLS records a client connection may queue before it writes them
/// out: rustls's default (64 KiB) makes a refresh's stream one `writev` per
/// 50 KiB or so; at 1 MiB a stream takes a third of the system calls and
/// the source agent about a tenth less CPU (measured: docs/benchmarks.md).
pub const TLS_SEND_BUFFER: usize = 1 << 20;

/// The address is not HOST:PORT.
#[derive(Debug, thiserror::Error)]
#[error("{0}: bad agent address; use HOST:PORT, e.g. 10.0.0.5:7443 or db1.example.com:7443")]
pub struct BadAddress(pub String);

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

/// Opens a gRPC channel to an agent. The connection is made by the first
/// call, so TLS and identity failures surface as that call's error.
pub fn channel<T: ClientTls>(tls: Arc<T>, target: &AgentTarget) -> Result<Channel, BadAddress> {
    let (host, port) =
        split_host_port(&target.address).ok_or_else(|| BadAddress(target.address.clone()))?;
    let endpoint = Endpoint::from_shared(format!("http://{}", target.address))
        .map_err(|_| BadAddress(target.address.clone()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW));
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
            let mut tls_stream = tokio_rustls::TlsConnector::from(tls.client_config())
                .connect(name, tcp)
                .await?;
            tls_stream
                .get_mut()
                .1
                .set_buffer_limit(Some(TLS_SEND_BUFFER));
            if let Some(expected) = expected {
                let actual = crate::tls::peer_identity(tls_stream.get_ref().1.peer_certificates())
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
    Ok(endpoint.connect_with_connector_lazy(connector))
}
