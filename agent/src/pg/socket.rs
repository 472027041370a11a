//! A server session's socket, which a source lane can take off the
//! runtime's watch list while it has nowhere to put what the server sends.
//!
//! A COPY's server writes its rows 8 KiB at a time. While the lane waits
//! for room in the outgoing stream, each of those writes would still wake
//! the agent's runtime (a readiness event that no task is waiting for).
//! Parked, the socket is unknown to the runtime's poller until the lane
//! next reads or writes it; the server's writes just fill the socket's
//! buffer. On a busy host this halves the source agent's context switches.
//!
//! A destination lane, the writing side, widens the socket's send buffer
//! instead, so it waits for its server less often.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// A stream a session can run on.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(crate) enum Socket {
    /// A unix socket, watched by the runtime.
    Unix(UnixStream),
    /// A unix socket off the watch list until it is next used (None only
    /// if taking it off failed, which leaves the session unusable).
    Parked(Option<std::os::unix::net::UnixStream>),
    /// Anything else (TLS over TCP), always watched.
    Other(Box<dyn Io>),
}

impl Socket {
    /// Takes a unix socket off the watch list; nothing for other streams
    /// or one already parked.
    pub(crate) fn park(&mut self) -> io::Result<()> {
        if !matches!(self, Socket::Unix(_)) {
            return Ok(());
        }
        let Socket::Unix(watched) = std::mem::replace(self, Socket::Parked(None)) else {
            return Ok(());
        };
        *self = Socket::Parked(Some(watched.into_std()?));
        Ok(())
    }

    /// Asks the kernel for a send buffer of `bytes` on a unix socket (it
    /// may grant less: `net.core.wmem_max`); nothing for other streams.
    /// Returns what the socket has now.
    pub(crate) fn widen_send_buffer(&mut self, bytes: usize) -> io::Result<Option<usize>> {
        use nix::sys::socket::{getsockopt, setsockopt, sockopt::SndBuf};
        let Socket::Unix(s) = self else {
            return Ok(None);
        };
        setsockopt(s, SndBuf, &bytes).map_err(io::Error::from)?;
        getsockopt(s, SndBuf).map(Some).map_err(io::Error::from)
    }

    #[cfg(test)]
    fn is_parked(&self) -> bool {
        matches!(self, Socket::Parked(_))
    }

    /// The stream to use now, watched again if it was parked.
    fn live(&mut self) -> io::Result<Pin<&mut dyn Io>> {
        if let Socket::Parked(parked) = self {
            let socket = parked.take().ok_or_else(|| {
                io::Error::other("the server socket was lost when the agent stopped watching it")
            })?;
            *self = Socket::Unix(UnixStream::from_std(socket)?);
        }
        match self {
            Socket::Unix(s) => Ok(Pin::new(s)),
            Socket::Other(s) => Ok(Pin::new(s.as_mut())),
            Socket::Parked(_) => Err(io::Error::other(
                "the server socket could not be watched again",
            )),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().live() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().live() {
            Ok(s) => s.poll_write(cx, bytes),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().live() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().live() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_parked_socket_keeps_what_arrives_and_reads_it_when_used() {
        let (ours, mut server) = UnixStream::pair().unwrap();
        let mut socket = Socket::Unix(ours);
        socket.park().unwrap();
        assert!(socket.is_parked());
        socket.park().unwrap();
        assert!(socket.is_parked(), "parking twice is parking once");
        // The server goes on writing while nobody watches.
        let sent: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let writer = tokio::spawn({
            let sent = sent.clone();
            async move {
                server.write_all(&sent).await.unwrap();
                server
            }
        });
        let mut got = vec![0u8; sent.len()];
        socket.read_exact(&mut got).await.unwrap();
        assert!(!socket.is_parked(), "reading watches it again");
        assert_eq!(got, sent);
        // Parked again between reads and writes, it still works both ways.
        let mut server = writer.await.unwrap();
        socket.park().unwrap();
        socket.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        server.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
        drop(server);
        socket.park().unwrap();
        let mut rest = Vec::new();
        socket.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the server's close is seen after parking");
    }

    #[tokio::test]
    async fn a_unix_socket_takes_a_wider_send_buffer() {
        use nix::sys::socket::{getsockopt, sockopt::SndBuf};
        let (ours, _server) = UnixStream::pair().unwrap();
        let before = getsockopt(&ours, SndBuf).unwrap();
        let mut socket = Socket::Unix(ours);
        let after = socket.widen_send_buffer(before * 2).unwrap().unwrap();
        assert!(after > before, "{before} -> {after}");
        let (ours, _peer) = tokio::io::duplex(64);
        let mut other = Socket::Other(Box::new(ours));
        assert_eq!(other.widen_send_buffer(1 << 20).unwrap(), None);
    }

    #[tokio::test]
    async fn other_streams_are_never_parked() {
        let (ours, mut peer) = tokio::io::duplex(64);
        let mut socket = Socket::Other(Box::new(ours));
        socket.park().unwrap();
        assert!(!socket.is_parked());
        peer.write_all(b"abc").await.unwrap();
        let mut three = [0u8; 3];
        socket.read_exact(&mut three).await.unwrap();
        assert_eq!(&three, b"abc");
    }
}
