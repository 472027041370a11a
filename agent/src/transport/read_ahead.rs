//! Reads from a connection's socket in large blocks once it is armed.
//!
//! rustls asks its socket for about one TLS record (16 KiB) at a time, so a
//! refresh's stream arriving at the destination took some 90,000 `recvfrom`
//! calls. Under rustls, a connection reads ahead into a buffer of its own
//! that starts at 16 KiB and doubles, up to 64 KiB, whenever a read fills
//! it (more was waiting): a bulk stream reads four records per call and
//! copies them once more, out of a buffer small enough to stay in cache
//! (256 KiB measured no better, and worse on a quiet host); a quiet
//! connection keeps a small one. Nothing is allocated before [`arm`]
//! (after the TLS handshake), so connections still shaking hands cost no
//! buffer. Writes pass straight through.
//!
//! [`arm`]: ReadAhead::arm

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The buffer's first size.
const START: usize = 16 * 1024;
/// The most it grows to.
const MAX: usize = 64 * 1024;

pub struct ReadAhead<T> {
    inner: T,
    buf: Vec<u8>,
    /// The buffered bytes not yet read: `buf[pos..end]`.
    pos: usize,
    end: usize,
    armed: bool,
    /// The last fill filled the buffer: the next one gets a larger one.
    grow: bool,
}

impl<T> ReadAhead<T> {
    pub fn new(inner: T) -> Self {
        ReadAhead {
            inner,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            armed: false,
            grow: false,
        }
    }

    /// From now on, reads go through the buffer.
    pub fn arm(&mut self) {
        self.armed = true;
    }

    /// The buffer's size (0 until the first read after [`Self::arm`]).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.len()
    }

    #[cfg(test)]
    fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> ReadAhead<T> {
    /// Refills the buffer with one read; false at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.buf.is_empty() || self.grow {
            let size = (self.buf.len() * 2).clamp(START, MAX);
            self.buf = vec![0; size];
            self.grow = false;
        }
        let mut into = ReadBuf::new(&mut self.buf);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut into))?;
        let n = into.filled().len();
        (self.pos, self.end) = (0, n);
        self.grow = n == self.buf.len() && n < MAX;
        Poll::Ready(Ok(n > 0))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.armed || out.remaining() == 0 {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        if this.pos == this.end && !ready!(this.poll_fill(cx))? {
            return Poll::Ready(Ok(()));
        }
        let n = out.remaining().min(this.end - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A reader that hands out `script`'s pieces, one per read (as much of
    /// each as the reader's buffer takes), and records the sizes asked for.
    struct Script {
        pieces: std::collections::VecDeque<Result<Vec<u8>, io::ErrorKind>>,
        asked: Vec<usize>,
    }

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.asked.push(out.remaining());
            match self.pieces.front_mut() {
                None => Poll::Ready(Ok(())),
                Some(Err(kind)) => {
                    let e = io::Error::from(*kind);
                    self.pieces.pop_front();
                    Poll::Ready(Err(e))
                }
                Some(Ok(piece)) => {
                    let n = piece.len().min(out.remaining());
                    out.put_slice(&piece[..n]);
                    piece.drain(..n);
                    if piece.is_empty() {
                        self.pieces.pop_front();
                    }
                    Poll::Ready(Ok(()))
                }
            }
        }
    }

    fn script(pieces: Vec<Result<Vec<u8>, io::ErrorKind>>) -> ReadAhead<Script> {
        ReadAhead::new(Script {
            pieces: pieces.into(),
            asked: Vec::new(),
        })
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    #[tokio::test]
    async fn what_comes_out_is_what_went_in_whatever_the_sizes() {
        let sent: Vec<Vec<u8>> = [1, 5000, 16_384, 70_000, 300_000, 3]
            .iter()
            .enumerate()
            .map(|(i, n)| bytes(*n, i as u8))
            .collect();
        for read_size in [1, 13, 4096, 17_000, 1 << 20] {
            let mut r = script(sent.iter().cloned().map(Ok).collect());
            r.arm();
            let mut got = Vec::new();
            let mut chunk = vec![0u8; read_size];
            loop {
                let n = r.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(got, sent.concat(), "reads of {read_size}");
        }
    }

    #[tokio::test]
    async fn unarmed_it_passes_reads_through_and_holds_no_buffer() {
        let mut r = script(vec![Ok(bytes(100, 1))]);
        let mut small = [0u8; 10];
        assert_eq!(r.read(&mut small).await.unwrap(), 10);
        assert_eq!(r.get_ref().asked, [10], "the caller's size");
        assert_eq!(r.capacity(), 0);
    }

    #[tokio::test]
    async fn the_buffer_grows_while_reads_fill_it_and_stops_at_the_most() {
        let mut r = script(vec![Ok(bytes(2 << 20, 2))]);
        r.arm();
        let mut record = [0u8; 4096];
        let mut total = 0;
        while total < 2 << 20 {
            total += r.read(&mut record).await.unwrap();
        }
        let asked = &r.get_ref().asked;
        assert_eq!(asked[..3], [START, 2 * START, MAX]);
        assert!(asked[3..].iter().all(|n| *n == MAX));
        assert_eq!(r.capacity(), MAX);
    }

    #[tokio::test]
    async fn a_quiet_connection_keeps_a_small_buffer() {
        let pieces = (0..50).map(|i| Ok(bytes(300, i))).collect();
        let mut r = script(pieces);
        r.arm();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out.len(), 50 * 300);
        assert_eq!(r.capacity(), START);
    }

    #[tokio::test]
    async fn errors_and_the_end_come_through() {
        let mut r = script(vec![Ok(bytes(10, 3)), Err(io::ErrorKind::ConnectionReset)]);
        r.arm();
        let mut buf = [0u8; 64];
        assert_eq!(r.read(&mut buf).await.unwrap(), 10);
        let e = r.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(r.read(&mut buf).await.unwrap(), 0, "then the end");
    }

    #[tokio::test]
    async fn writes_pass_straight_through() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = ReadAhead::new(a);
        w.arm();
        w.write_all(b"hello").await.unwrap();
        w.flush().await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
