//! The copy lanes' own sessions, on both sides: as much of the PostgreSQL
//! wire protocol as a session that imports a snapshot and runs `COPY … TO
//! STDOUT`, or runs `COPY … FROM STDIN` in a transaction, needs; over the
//! server's unix socket, over TCP with TLS (the certificate checked as for
//! every other session) or, for a source lane, plain TCP to a loopback
//! address (`postgres.copy_over_tcp`), logging in with no password (peer,
//! trust), SCRAM-SHA-256, MD5 or a plain password (an RDS IAM token).
//!
//! A lane carries a COPY's CopyData messages as the source server sent
//! them: the source cuts the bytes it reads off the socket at message
//! boundaries, without copying a row, and the destination writes them to
//! its server as they arrive, once [`CopyDataCheck`] has seen that they are
//! CopyData messages and nothing else. A general client would take each row
//! apart and build it again on both sides. Memory stays bounded: a chunk is
//! at most what one read returns, whatever the rows.

mod login;

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::message::{HEADER, copied_rows, error_text, header, unexpected};
use super::socket::Socket;

pub use login::Login;

/// Bytes read from the socket at a time.
const BLOCK: usize = 256 * 1024;
/// How long opening a session may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Over plain TCP, the bytes of rows the kernel gathers before it wakes
/// the agent (the socket's low-water mark), once a COPY is past
/// [`GATHER_AFTER`] bytes.
const GATHER: usize = 64 * 1024;
/// A COPY's bytes before its socket gathers: a small table's rows (and its
/// end) come without waiting for [`GATHER_WAIT`].
const GATHER_AFTER: usize = 1024 * 1024;
/// How long a lane waits for the mark before it takes what is there (the
/// COPY's last rows, or a server that slowed down). Never holds the
/// server up: the socket's buffer is larger than the mark.
const GATHER_WAIT: Duration = Duration::from_millis(2);

pub use super::copy_check::CopyDataCheck;

/// One session on a server, as a copy lane uses it.
pub struct Wire {
    stream: Socket,
    /// Bytes read and not yet taken.
    rbuf: BytesMut,
    /// Bytes of the current row still to come from the socket.
    pending: usize,
    /// Bytes at the front of `rbuf` already seen to be rows.
    scanned: usize,
    /// Whether the kernel gathers rows before it wakes the agent.
    gather: Gather,
    /// Bytes of rows taken from the current COPY.
    taken: usize,
}

/// A socket's low-water mark, on plain TCP (see [`GATHER`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gather {
    /// Not plain TCP: any byte wakes the agent.
    Unable,
    /// Any byte wakes the agent (a COPY's start, or outside a COPY).
    Off,
    /// The kernel wakes the agent once [`GATHER`] bytes are in.
    On,
}

impl Wire {
    /// Runs `sql` (one or more statements that return no rows) to its end.
    pub async fn execute(&mut self, sql: &str) -> Result<(), String> {
        self.query(sql).await?;
        self.until_ready(None).await
    }

    /// Starts `sql`, a `COPY … TO STDOUT`.
    pub async fn copy_out(&mut self, sql: &str) -> Result<(), String> {
        self.taken = 0;
        self.set_gather(Gather::Off)?;
        self.start_copy(sql, b'H').await
    }

    /// Sends `sql`, a COPY, and waits for the server's `answer`
    /// (CopyOutResponse or CopyInResponse).
    async fn start_copy(&mut self, sql: &str, answer: u8) -> Result<(), String> {
        self.query(sql).await?;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                t if t == answer => return Ok(()),
                b'E' => return Err(self.failed(&body).await),
                b'N' | b'S' => {}
                other => return Err(unexpected(other, "starting a COPY")),
            }
        }
    }

    /// The next run of the current COPY's CopyData messages as read off
    /// the socket (never copied): `want` bytes, or fewer when the COPY
    /// ends or when a quarter of them are in and the server has sent
    /// nothing more yet; `rows` counts the rows begun. None once the COPY
    /// ended. A run may end inside a row: the next goes on with it.
    pub async fn copy_data(
        &mut self,
        want: usize,
        rows: &mut u64,
    ) -> Result<Option<Bytes>, String> {
        loop {
            let ended = self.scan_rows(rows)?;
            let at = self.scanned;
            if at >= want || (ended && at > 0) {
                return self.take_run(at.min(want), want).map(Some);
            }
            if !ended && at >= want / 4 {
                // Enough for a run: more only if the server has it ready.
                // Waiting for a full run would wake the agent for each of
                // the server's 8 KiB writes once its socket ran dry.
                match self.read().now_or_never() {
                    Some(read) => read?,
                    None => return self.take_run(at, want).map(Some),
                }
                continue;
            }
            if !ended {
                self.fill().await?;
                continue;
            }
            let (tag, body) = self.message().await?;
            match tag {
                // CopyDone; CommandComplete and ReadyForQuery follow.
                b'c' => {
                    self.set_gather(Gather::Off)?;
                    self.until_ready(None).await?;
                    return Ok(None);
                }
                b'E' => return Err(self.failed(&body).await),
                b'N' | b'S' => {}
                other => return Err(unexpected(other, "reading a COPY")),
            }
        }
    }

    /// The first `n` bytes read, as a run of the current COPY; the
    /// socket gathers rows from [`GATHER_AFTER`] bytes on.
    fn take_run(&mut self, n: usize, want: usize) -> Result<Bytes, String> {
        let chunk = self.rbuf.split_to(n).freeze();
        self.scanned -= n;
        // Room for the next run, so reads never move what they gathered
        // (only what was read past this run is copied).
        self.rbuf.reserve(want + BLOCK);
        self.taken += n;
        if self.taken >= GATHER_AFTER && self.gather == Gather::Off {
            self.set_gather(Gather::On)?;
        }
        Ok(chunk)
    }

    /// Turns the socket's low-water mark on or off; nothing unless the
    /// session is on plain TCP.
    fn set_gather(&mut self, to: Gather) -> Result<(), String> {
        if self.gather == Gather::Unable || self.gather == to {
            return Ok(());
        }
        let mark = match to {
            Gather::On => GATHER,
            Gather::Off | Gather::Unable => 1,
        };
        self.stream
            .set_low_water(mark)
            .map_err(|e| format!("setting the server socket's low-water mark: {e}"))?;
        self.gather = to;
        Ok(())
    }

    /// Moves `scanned` past the rows read so far; true when a message
    /// other than a row follows them (the COPY's end, or an error).
    fn scan_rows(&mut self, rows: &mut u64) -> Result<bool, String> {
        loop {
            if self.pending > 0 {
                let n = self.pending.min(self.rbuf.len() - self.scanned);
                self.scanned += n;
                self.pending -= n;
                if self.pending > 0 {
                    return Ok(false);
                }
                continue;
            }
            match header(&self.rbuf[self.scanned..])? {
                Some((b'd', len)) => {
                    self.scanned += HEADER;
                    self.pending = len - 4;
                    *rows += 1;
                }
                Some(_) => return Ok(true),
                None => return Ok(false),
            }
        }
    }

    /// Takes the socket off the runtime's watch list until it is next
    /// used, while the caller waits for something else (see [`Socket`]).
    pub fn park(&mut self) {
        if let Err(e) = self.stream.park() {
            tracing::warn!(error = %e, "could not stop watching a server socket");
        }
    }

    /// A wider send buffer on a unix socket to the server (see
    /// [`Socket::widen_send_buffer`]).
    pub fn widen_send_buffer(&mut self, bytes: usize) -> std::io::Result<Option<usize>> {
        self.stream.widen_send_buffer(bytes)
    }

    /// Starts `sql`, a `COPY … FROM STDIN`.
    pub async fn copy_in(&mut self, sql: &str) -> Result<(), String> {
        self.start_copy(sql, b'G').await
    }

    /// Writes CopyData messages (checked by a [`CopyDataCheck`]) into the
    /// current `COPY … FROM STDIN`. A server that already gave up on the
    /// COPY says so here rather than after the last row.
    pub async fn write_copy_data(&mut self, messages: &[u8]) -> Result<(), String> {
        if let Err(e) = self.send(messages).await {
            // A server that ended the session says why before it closes.
            return Err(match self.error_waiting() {
                Some(why) => format!("{why}; then {e}"),
                None => e,
            });
        }
        if let Some(read) = self.stream.read_buf(&mut self.rbuf).now_or_never() {
            match read {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("reading from the server: {e}")),
            }
            while let Some((tag, len)) = header(&self.rbuf)?
                && self.rbuf.len() > len
            {
                let msg = self.rbuf.split_to(1 + len);
                match tag {
                    b'E' => return Err(self.failed(&msg[HEADER..]).await),
                    b'N' | b'S' => {}
                    other => return Err(unexpected(other, "writing a COPY")),
                }
            }
        }
        Ok(())
    }

    /// An error message the server sent and nobody read yet, if any.
    fn error_waiting(&mut self) -> Option<String> {
        let _ = self.stream.read_buf(&mut self.rbuf).now_or_never();
        let mut at = 0;
        while let Ok(Some((tag, len))) = header(&self.rbuf[at..])
            && self.rbuf.len() - at > len
        {
            if tag == b'E' {
                return Some(error_text(&self.rbuf[at + HEADER..at + 1 + len]));
            }
            at += 1 + len;
        }
        None
    }

    /// Ends the current `COPY … FROM STDIN`; the rows the server took.
    pub async fn copy_done(&mut self) -> Result<u64, String> {
        let mut out = BytesMut::new();
        frontend::copy_done(&mut out);
        self.send(&out).await?;
        let mut rows = None;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'C' => rows = copied_rows(&body),
                b'E' => return Err(self.failed(&body).await),
                b'Z' => break,
                _ => {}
            }
        }
        rows.ok_or_else(|| "the server did not say how many rows it copied".to_string())
    }

    /// The error an ErrorResponse `body` reports, once the session is
    /// ready for the next query again.
    async fn failed(&mut self, body: &[u8]) -> String {
        let e = error_text(body);
        match self.until_ready(None).await {
            Ok(()) => e,
            Err(then) => format!("{e}; then {then}"),
        }
    }

    async fn query(&mut self, sql: &str) -> Result<(), String> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| e.to_string())?;
        self.send(&out).await
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let failed = |e: std::io::Error| format!("writing to the server: {e}");
        self.stream.write_all(bytes).await.map_err(failed)?;
        // Over TLS, the last records may wait in the session's buffer for
        // a socket that was full: flushed, they reach the server now, not
        // never (a COPY would wait for its last rows).
        self.stream.flush().await.map_err(failed)
    }

    /// Reads up to the next ReadyForQuery; `Err` with the query's error
    /// (or `failed`) if there was one.
    async fn until_ready(&mut self, mut failed: Option<String>) -> Result<(), String> {
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'E' if failed.is_none() => failed = Some(error_text(&body)),
                b'Z' => return failed.map_or(Ok(()), Err),
                _ => {}
            }
        }
    }

    /// The next whole message: its tag and body.
    async fn message(&mut self) -> Result<(u8, Bytes), String> {
        loop {
            if let Some((tag, len)) = header(&self.rbuf)?
                && self.rbuf.len() > len
            {
                let mut msg = self.rbuf.split_to(1 + len);
                msg.advance(HEADER);
                return Ok((tag, msg.freeze()));
            }
            self.fill().await?;
        }
    }

    /// Reads the next block from the socket. While the socket gathers
    /// rows, a read that finds less than the mark after [`GATHER_WAIT`]
    /// takes what there is.
    async fn fill(&mut self) -> Result<(), String> {
        if self.gather != Gather::On {
            return self.read().await;
        }
        if let Ok(read) = tokio::time::timeout(GATHER_WAIT, self.read()).await {
            return read;
        }
        self.set_gather(Gather::Off)?;
        let read = self.read().await;
        self.set_gather(Gather::On)?;
        read
    }

    /// Reads what the socket has, waiting for it to be readable.
    async fn read(&mut self) -> Result<(), String> {
        if self.rbuf.capacity() - self.rbuf.len() < BLOCK / 4 {
            self.rbuf.reserve(BLOCK);
        }
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("reading from the server: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session whose server sends `bytes` in pieces of `piece` bytes.
    fn session(bytes: Vec<u8>, piece: usize) -> Wire {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            for p in bytes.chunks(piece) {
                if server.write_all(p).await.is_err() {
                    return;
                }
            }
            // Held open, as a server waits for the next query.
            std::future::pending::<()>().await;
        });
        Wire {
            stream: Socket::Other(Box::new(client)),
            rbuf: BytesMut::with_capacity(BLOCK),
            pending: 0,
            scanned: 0,
            gather: Gather::Unable,
            taken: 0,
        }
    }

    #[tokio::test]
    async fn a_copy_comes_out_whole_in_runs_cut_anywhere() {
        let mut rows_out = Vec::new();
        for i in 0..500usize {
            rows_out.push(b'd');
            rows_out.extend_from_slice(&((4 + i % 97) as u32).to_be_bytes());
            rows_out.extend(std::iter::repeat_n(b'r', i % 97));
        }
        let mut server = rows_out.clone();
        server.extend_from_slice(b"c\0\0\0\x04");
        server.extend_from_slice(b"C\0\0\0\x0dCOPY 500\0");
        server.extend_from_slice(b"Z\0\0\0\x05I");
        for (piece, want) in [
            (1, 7),
            (3, 100),
            (4096, 1000),
            (100_000, 50),
            (100_000, 1 << 20),
        ] {
            let mut wire = session(server.clone(), piece);
            let (mut got, mut rows) = (Vec::new(), 0u64);
            while let Some(run) = wire.copy_data(want, &mut rows).await.unwrap() {
                assert!(run.len() <= want, "a run is at most what was asked");
                got.extend_from_slice(&run);
            }
            assert_eq!(got, rows_out, "pieces of {piece}, runs of {want}");
            assert_eq!(rows, 500);
        }
    }

    #[tokio::test]
    async fn a_run_comes_back_short_when_a_quarter_is_in_and_the_server_pauses() {
        let mut rows_out = Vec::new();
        for _ in 0..10 {
            rows_out.push(b'd');
            rows_out.extend_from_slice(&14u32.to_be_bytes());
            rows_out.extend_from_slice(b"0123456789");
        }
        // 150 bytes of rows, then nothing: the server has no more yet.
        let mut wire = session(rows_out.clone(), rows_out.len());
        let mut rows = 0;
        let run = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            wire.copy_data(200, &mut rows),
        )
        .await
        .expect("a run at least a quarter full must not wait for the rest");
        assert_eq!(run.unwrap().unwrap(), rows_out);
        assert_eq!(rows, 10);
    }

    /// Over loopback TCP, a COPY past [`GATHER_AFTER`] has its socket
    /// gather rows; its last rows, under the mark, still come (after the
    /// short wait), and the mark is off again once the COPY ended.
    #[tokio::test]
    async fn over_tcp_a_long_copy_gathers_and_its_last_rows_still_come() {
        let mut rows_out = Vec::new();
        for i in 0..30_000u32 {
            rows_out.push(b'd');
            rows_out.extend_from_slice(&104u32.to_be_bytes());
            rows_out.extend_from_slice(&[(i % 251) as u8; 100]);
        }
        let mut server_sends = rows_out.clone();
        server_sends.extend_from_slice(b"c\0\0\0\x04");
        server_sends.extend_from_slice(b"C\0\0\0\x0fCOPY 30000\0");
        server_sends.extend_from_slice(b"Z\0\0\0\x05I");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            for p in server_sends.chunks(8192) {
                server.write_all(p).await.unwrap();
            }
            // Held open, as a server waits for the next query.
            std::future::pending::<()>().await;
        });
        let mut wire = Wire {
            stream: Socket::Tcp(client),
            rbuf: BytesMut::with_capacity(BLOCK),
            pending: 0,
            scanned: 0,
            gather: Gather::Off,
            taken: 0,
        };
        let (mut got, mut rows, mut gathered) = (Vec::new(), 0u64, false);
        let copy = async {
            while let Some(run) = wire.copy_data(256 * 1024, &mut rows).await.unwrap() {
                got.extend_from_slice(&run);
                gathered |= wire.gather == Gather::On;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), copy)
            .await
            .expect("the last rows, under the mark, must come");
        assert!(rows_out.len() > GATHER_AFTER + GATHER);
        assert!(gathered, "the socket never gathered rows");
        assert_eq!(wire.gather, Gather::Off);
        assert_eq!(got, rows_out);
        assert_eq!(rows, 30_000);
    }

    #[tokio::test]
    async fn a_message_of_a_bad_length_is_an_error() {
        let mut wire = session(b"d\0\0\0\x05xd\0\0\0\x02".to_vec(), 3);
        let mut rows = 0;
        let err = wire.copy_data(1 << 20, &mut rows).await.unwrap_err();
        assert!(err.contains("length 2"), "{err}");
    }
}
