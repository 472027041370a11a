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
//! A source lane on plain TCP to a server on this host
//! (`postgres.copy_over_tcp`) can do better: with a low-water mark on the
//! socket, the kernel wakes the agent only once that many bytes are in.
//!
//! A destination lane, the writing side, widens the socket's send buffer
//! instead, so it waits for its server less often.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A stream a session can run on.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(crate) enum Socket {
    /// A unix socket, watched by the runtime.
    Unix(UnixStream),
    /// Plain TCP to a server on this host, watched by the runtime.
    Tcp(TcpStream),
    /// A socket off the watch list until it is next used (None only if
    /// taking it off failed, which leaves the session unusable).
    Parked(Option<Unwatched>),
    /// Anything else (TLS over TCP), always watched.
    Other(Box<dyn Io>),
}

/// A parked socket.
pub(crate) enum Unwatched {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Socket {
    /// Takes a unix or plain TCP socket off the watch list; nothing for
    /// other streams or one already parked.
    pub(crate) fn park(&mut self) -> io::Result<()> {
        if !matches!(self, Socket::Unix(_) | Socket::Tcp(_)) {
            return Ok(());
        }
        *self = match std::mem::replace(self, Socket::Parked(None)) {
            Socket::Unix(watched) => Socket::Parked(Some(Unwatched::Unix(watched.into_std()?))),
            Socket::Tcp(watched) => Socket::Parked(Some(Unwatched::Tcp(watched.into_std()?))),
            other => other,
        };
        Ok(())
    }

    /// Has the kernel wake a reader of a plain TCP socket only once
    /// `bytes` are in (1: for any byte; it still wakes it when the buffer
    /// is under pressure or the peer closes). Nothing for other streams.
    pub(crate) fn set_low_water(&mut self, bytes: usize) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => low_water::set(s.as_fd(), bytes),
            Socket::Parked(Some(Unwatched::Tcp(s))) => low_water::set(s.as_fd(), bytes),
            _ => Ok(()),
        }
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
            *self = match socket {
                Unwatched::Unix(s) => Socket::Unix(UnixStream::from_std(s)?),
                Unwatched::Tcp(s) => Socket::Tcp(TcpStream::from_std(s)?),
            };
        }
        match self {
            Socket::Unix(s) => Ok(Pin::new(s)),
            Socket::Tcp(s) => Ok(Pin::new(s)),
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

/// `SO_RCVLOWAT`, which nix does not wrap.
#[allow(unsafe_code)]
mod low_water {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};

    pub(super) fn set(socket: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
        let value = libc::c_int::try_from(bytes)
            .map_err(|_| io::Error::other(format!("a low-water mark of {bytes} bytes")))?;
        // SAFETY: the descriptor is borrowed from a live socket for the
        // call, and the option's value is a c_int that outlives it, with
        // its size passed alongside.
        let done = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if done == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
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

    /// A connected pair on loopback TCP: ours and the server's end.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (ours, server)
    }

    /// Waits until `n` bytes wait in the socket (peeked, never taken).
    fn until_waiting(socket: &Socket, n: usize) {
        use nix::sys::socket::{MsgFlags, recv};
        let Socket::Tcp(s) = socket else {
            panic!("not TCP")
        };
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match recv(
                s.as_raw_fd(),
                &mut buf,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(got) if got >= n => return,
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => std::thread::yield_now(),
                Err(e) => panic!("peeking: {e}"),
            }
        }
    }

    /// Whether the kernel calls the socket readable now.
    fn readable(socket: &Socket) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let Socket::Tcp(s) = socket else {
            panic!("not TCP")
        };
        let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    #[tokio::test]
    async fn a_tcp_socket_with_a_low_water_mark_wakes_its_reader_only_past_it() {
        let (ours, mut server) = tcp_pair().await;
        let mut socket = Socket::Tcp(ours);
        socket.set_low_water(64 * 1024).unwrap();
        server.write_all(&[7u8; 8192]).await.unwrap();
        until_waiting(&socket, 8192);
        assert!(!readable(&socket), "8 KiB in, under the mark");
        server.write_all(&[7u8; 64 * 1024]).await.unwrap();
        until_waiting(&socket, 72 * 1024);
        assert!(readable(&socket), "72 KiB in, past the mark");
        // Back to one byte: what is in is readable at once.
        let mut got = vec![0u8; 72 * 1024];
        socket.read_exact(&mut got).await.unwrap();
        socket.set_low_water(1).unwrap();
        server.write_all(b"x").await.unwrap();
        until_waiting(&socket, 1);
        assert!(readable(&socket));
        // Parked and watched again, it is the same socket.
        socket.park().unwrap();
        assert!(socket.is_parked());
        socket.set_low_water(1).unwrap();
        let mut one = [0u8; 1];
        socket.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"x");
        assert!(matches!(socket, Socket::Tcp(_)));
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
