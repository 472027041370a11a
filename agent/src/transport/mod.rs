//! The agent's listener: TCP, then a TLS 1.3 handshake that requires a
//! client certificate from the fleet CA, then gRPC.
//!
//! Handshakes run in their own tasks so a slow or hostile client cannot hold
//! up the accept loop, and what anyone who can reach the port can take is
//! bounded: a connection has a few seconds to start its handshake and a
//! few more to finish it, only so many may be pending at once (beyond that
//! a new one is closed at once), and only so many handshakes do their
//! cryptography at a time. A client that connects and says nothing holds a
//! socket for those few seconds and nothing else. The peer's identity
//! travels with each connection into the request extensions as
//! [`PeerInfo`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use stagesync_certs::{Identity, ReloadingServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

mod read_ahead;
use read_ahead::ReadAhead;

/// How long a client gets to send the first bytes of its handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client gets to finish the TLS handshake once it started.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted and not yet through their handshake; beyond this a
/// new connection is closed at once.
const MAX_PENDING: usize = 4096;
/// Handshakes doing their cryptography at once.
const MAX_HANDSHAKES: usize = 64;

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// The identity in the client's certificate, or why it has none usable.
    pub identity: Result<Identity, String>,
}

/// An accepted, authenticated TLS connection.
pub struct TlsConn {
    stream: TlsStream<ReadAhead<TcpStream>>,
    peer: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts connections until `cancel` fires, handing authenticated ones to
/// the returned channel.
pub fn accept_loop(
    listener: TcpListener,
    tls: Arc<ReloadingServerConfig>,
    cancel: CancellationToken,
) -> mpsc::Receiver<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = pending.clone().try_acquire_owned() else {
                too_many(remote);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (tls, tx, handshakes) = (tls.clone(), tx.clone(), handshakes.clone());
            tokio::spawn(async move {
                let _slot = slot;
                if let Some(conn) = handshake(tcp, remote, &tls, &handshakes).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    rx
}

/// Logs a connection closed because too many are pending, at most once a
/// minute: a flood should not flood the log too.
fn too_many(remote: SocketAddr) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
        *last = Some(std::time::Instant::now());
        tracing::warn!(%remote, pending = MAX_PENDING, "too many connections waiting for their handshake; closing new ones until some finish");
    }
}

/// Runs one connection's TLS handshake: its first bytes within
/// [`HELLO_TIMEOUT`], then the handshake (one of [`MAX_HANDSHAKES`]) within
/// [`HANDSHAKE_TIMEOUT`].
async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: &ReloadingServerConfig,
    handshakes: &Semaphore,
) -> Option<TlsConn> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HELLO_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return None,
        Err(_) => {
            tracing::debug!(%remote, "closed a connection that sent nothing");
            return None;
        }
    }
    let _turn = handshakes.acquire().await.ok()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    let tcp = ReadAhead::new(tcp);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(mut stream)) => {
            stream.get_mut().0.arm();
            let identity =
                stagesync_certs::tls::peer_identity(stream.get_ref().1.peer_certificates())
                    .map_err(|e| e.to_string());
            let peer = PeerInfo { remote, identity };
            Some(TlsConn { stream, peer })
        }
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "tls handshake refused");
            None
        }
        Err(_) => {
            tracing::warn!(%remote, "tls handshake timed out");
            None
        }
    }
}
