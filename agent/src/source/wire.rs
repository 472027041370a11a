//! A copy lane's own connection to the source database: as much of the
//! PostgreSQL wire protocol as a session that imports a snapshot and runs
//! `COPY … TO STDOUT` needs, over the server's unix socket.
//!
//! A general client hands each row to its caller as a message of its own;
//! here the socket is read in large blocks and the rows' bytes are copied
//! straight into the lane's chunk, so a table of many small rows costs a
//! memory copy per row and a system call per block, not a wakeup per row.
//! A row larger than a block streams through as it arrives: memory stays
//! bounded whatever the rows.

use std::path::Path;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Bytes read from the socket at a time.
const BLOCK: usize = 256 * 1024;
/// Tag, then a length that counts itself.
const HEADER: usize = 5;

/// One session on the source database.
pub struct Wire {
    stream: UnixStream,
    /// Bytes read and not yet taken.
    rbuf: BytesMut,
    /// Bytes of the current row still to come from the socket.
    pending: usize,
}

/// How far a COPY's rows were taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// The chunk is full; the COPY goes on.
    Full,
    /// The COPY ended (its last rows are in the chunk).
    Done,
}

impl Wire {
    /// Connects to `database` as `user` over the socket `socket`; the
    /// server must let the user in without a password (peer or trust), as
    /// it does for the agent's other sessions.
    pub async fn connect(socket: &Path, user: &str, database: &str) -> Result<Wire, String> {
        let stream = tokio::time::timeout(Duration::from_secs(10), UnixStream::connect(socket))
            .await
            .map_err(|_| format!("connecting to {}: timed out", socket.display()))?
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        let mut wire = Wire {
            stream,
            rbuf: BytesMut::with_capacity(BLOCK),
            pending: 0,
        };
        let mut out = BytesMut::new();
        let params = [
            ("user", user),
            ("database", database),
            ("application_name", "stagesync-agent"),
            // Both ends of a lane read and write COPY text as UTF-8.
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params, &mut out).map_err(|e| e.to_string())?;
        wire.send(&out).await?;
        loop {
            let (tag, body) = wire.message().await?;
            match tag {
                b'R' if body.get(..4) == Some(&[0, 0, 0, 0]) => {}
                b'R' => {
                    return Err(format!(
                        "the server asks role {user:?} for a password; the agent's sessions on its own server need none (peer or trust in pg_hba.conf)"
                    ));
                }
                b'E' => return Err(error_text(&body)),
                b'Z' => return Ok(wire),
                _ => {}
            }
        }
    }

    /// Runs `sql` (one or more statements that return no rows) to its end.
    pub async fn execute(&mut self, sql: &str) -> Result<(), String> {
        self.query(sql).await?;
        self.until_ready(None).await
    }

    /// Starts `sql`, a `COPY … TO STDOUT`.
    pub async fn copy_out(&mut self, sql: &str) -> Result<(), String> {
        self.query(sql).await?;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'H' => return Ok(()),
                b'E' => return Err(self.failed(&body).await),
                b'N' | b'S' => {}
                other => return Err(unexpected(other, "starting a COPY")),
            }
        }
    }

    /// Appends the COPY's row bytes to `out` until it holds `want` bytes
    /// or the COPY ends; counts the rows completed in `rows`.
    pub async fn rows_into(
        &mut self,
        out: &mut BytesMut,
        want: usize,
        rows: &mut u64,
    ) -> Result<Taken, String> {
        loop {
            if self.pending > 0 {
                let n = self.pending.min(self.rbuf.len()).min(want - out.len());
                out.extend_from_slice(&self.rbuf[..n]);
                self.rbuf.advance(n);
                self.pending -= n;
                if self.pending == 0 {
                    *rows += 1;
                }
            }
            if out.len() >= want {
                return Ok(Taken::Full);
            }
            if self.pending > 0 {
                self.fill().await?;
                continue;
            }
            match header(&self.rbuf)? {
                None => self.fill().await?,
                Some((b'd', len)) => {
                    self.rbuf.advance(HEADER);
                    self.pending = len - 4;
                    if self.pending == 0 {
                        *rows += 1;
                    }
                }
                Some(_) => {
                    let (tag, body) = self.message().await?;
                    match tag {
                        // CopyDone; CommandComplete and ReadyForQuery follow.
                        b'c' => {
                            self.until_ready(None).await?;
                            return Ok(Taken::Done);
                        }
                        b'E' => return Err(self.failed(&body).await),
                        b'N' | b'S' => {}
                        other => return Err(unexpected(other, "reading a COPY")),
                    }
                }
            }
        }
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
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("writing to the source database: {e}"))
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

    /// Reads the next block from the socket.
    async fn fill(&mut self) -> Result<(), String> {
        if self.rbuf.capacity() - self.rbuf.len() < BLOCK / 4 {
            self.rbuf.reserve(BLOCK);
        }
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err("the source database closed the connection".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("reading from the source database: {e}")),
        }
    }
}

/// A message's tag and length (which counts itself, not the tag), once its
/// header is in.
fn header(buf: &[u8]) -> Result<Option<(u8, usize)>, String> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(format!(
            "the source database sent a message of length {len}"
        ));
    }
    Ok(Some((buf[0], len)))
}

fn unexpected(tag: u8, doing: &str) -> String {
    format!(
        "the source database sent an unexpected {:?} message while {doing}",
        tag as char
    )
}

/// An ErrorResponse as "SEVERITY: message (SQLSTATE code)": the fields that
/// may quote values (detail, where) are left out.
fn error_text(body: &[u8]) -> String {
    let (mut severity, mut code, mut message) = ("ERROR", "", "");
    for field in body.split(|b| *b == 0) {
        let Some((&kind, value)) = field.split_first() else {
            continue;
        };
        let value = std::str::from_utf8(value).unwrap_or("");
        match kind {
            b'V' => severity = value,
            b'S' if severity == "ERROR" => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    format!("{severity}: {message} (SQLSTATE {code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_severity_message_and_code_only() {
        let body = b"SERROR\0VERROR\0C42P01\0Mrelation \"x\" does not exist\0Dsecret row\0\0";
        assert_eq!(
            error_text(body),
            "ERROR: relation \"x\" does not exist (SQLSTATE 42P01)"
        );
    }

    #[test]
    fn headers_are_read_whole_or_not_at_all() {
        assert_eq!(header(b"d\0\0").unwrap(), None);
        assert_eq!(header(b"d\0\0\0\x09abcd").unwrap(), Some((b'd', 9)));
        assert!(header(b"d\0\0\0\x02").is_err());
    }
}
