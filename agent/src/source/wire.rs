//! A copy lane's own connection to the source database: as much of the
//! PostgreSQL wire protocol as a session that imports a snapshot and runs
//! `COPY … TO STDOUT` needs, over the server's unix socket or over TCP
//! with TLS (the server's certificate checked as for every other session),
//! logging in with no password (peer, trust), SCRAM-SHA-256, MD5 or a
//! plain password (an RDS IAM token).
//!
//! A general client hands each row to its caller as a message of its own;
//! here the socket is read in large blocks and the rows' bytes are copied
//! straight into the lane's chunk, so a table of many small rows costs a
//! memory copy per row and a system call per block, not a wakeup per row.
//! A row larger than a block streams through as it arrives: memory stays
//! bounded whatever the rows.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{Endpoint, PostgresConfig};

/// Bytes read from the socket at a time.
const BLOCK: usize = 256 * 1024;
/// Tag, then a length that counts itself.
const HEADER: usize = 5;
/// How long opening a session may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A socket or a TLS stream.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One session on the source database.
pub struct Wire {
    stream: Box<dyn Io>,
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
    /// Connects to `database` as the agent's role; errors name the server
    /// and the role, never a secret.
    pub async fn connect(pg: &PostgresConfig, database: &str) -> Result<Wire, String> {
        let at = || {
            format!(
                "PostgreSQL at {} as role {:?}",
                pg.endpoint.describe(),
                pg.user
            )
        };
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, Self::open(pg, database)).await;
        match opened {
            Ok(Ok(wire)) => Ok(wire),
            Ok(Err(e)) => Err(format!("{}: {e}", at())),
            Err(_) => Err(format!(
                "{}: no answer in {} s",
                at(),
                CONNECT_TIMEOUT.as_secs()
            )),
        }
    }

    async fn open(pg: &PostgresConfig, database: &str) -> Result<Wire, String> {
        let stream: Box<dyn Io> = match &pg.endpoint {
            Endpoint::Socket { dir, port } => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Box::new(
                    UnixStream::connect(&path)
                        .await
                        .map_err(|e| e.to_string())?,
                )
            }
            Endpoint::Tcp { host, port, tls } => {
                let mut tcp = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = tcp.set_nodelay(true);
                let mut out = BytesMut::new();
                frontend::ssl_request(&mut out);
                tcp.write_all(&out).await.map_err(|e| e.to_string())?;
                let mut answer = [0u8; 1];
                tcp.read_exact(&mut answer)
                    .await
                    .map_err(|e| e.to_string())?;
                if answer[0] != b'S' {
                    return Err("the server does not offer TLS (ssl = on)".into());
                }
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
                let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?,
                )
            }
        };
        let mut wire = Wire {
            stream,
            rbuf: BytesMut::with_capacity(BLOCK),
            pending: 0,
        };
        let mut out = BytesMut::new();
        let params = [
            ("user", pg.user.as_str()),
            ("database", database),
            ("application_name", "stagesync-agent"),
            // Both ends of a lane read and write COPY text as UTF-8.
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params, &mut out).map_err(|e| e.to_string())?;
        wire.send(&out).await?;
        wire.authenticate(pg).await?;
        wire.until_ready(None).await?;
        Ok(wire)
    }

    /// Answers the server's authentication requests until it says OK.
    async fn authenticate(&mut self, pg: &PostgresConfig) -> Result<(), String> {
        let mut scram: Option<ScramSha256> = None;
        let mut out = BytesMut::new();
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'E' => return Err(error_text(&body)),
                b'R' => {}
                other => return Err(unexpected(other, "logging in")),
            }
            let code = body
                .get(..4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
            let data = body.get(4..).unwrap_or_default();
            out.clear();
            match code {
                Some(0) => return Ok(()),
                // A password in the clear (inside TLS), or an MD5 of it.
                Some(3) => {
                    let password = Self::password(pg).await?;
                    frontend::password_message(password.as_bytes(), &mut out)
                        .map_err(|e| e.to_string())?;
                }
                Some(5) if data.len() == 4 => {
                    let password = Self::password(pg).await?;
                    let salt = [data[0], data[1], data[2], data[3]];
                    let hash = md5_hash(pg.user.as_bytes(), password.as_bytes(), salt);
                    frontend::password_message(hash.as_bytes(), &mut out)
                        .map_err(|e| e.to_string())?;
                }
                Some(10) => {
                    let offered = data
                        .split(|b| *b == 0)
                        .any(|m| m == SCRAM_SHA_256.as_bytes());
                    if !offered {
                        return Err(
                            "the server offers no SASL mechanism this agent speaks (SCRAM-SHA-256)"
                                .into(),
                        );
                    }
                    let password = Self::password(pg).await?;
                    let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                        .map_err(|e| e.to_string())?;
                    scram = Some(s);
                }
                Some(11) => {
                    let s = scram.as_mut().ok_or("a SASL step out of order")?;
                    s.update(data).map_err(|e| format!("SCRAM: {e}"))?;
                    frontend::sasl_response(s.message(), &mut out).map_err(|e| e.to_string())?;
                }
                Some(12) => {
                    let s = scram.as_mut().ok_or("a SASL step out of order")?;
                    s.finish(data)
                        .map_err(|e| format!("SCRAM: the server's proof is wrong: {e}"))?;
                    continue;
                }
                _ => {
                    return Err(
                        "the server asks for an authentication this agent does not speak".into(),
                    );
                }
            }
            self.send(&out).await?;
        }
    }

    /// The agent's password, for a server that asks for one.
    async fn password(pg: &PostgresConfig) -> Result<String, String> {
        match pg.secret.password(&pg.user).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(format!(
                "the server asks role {:?} for a password and postgres.password_file, password_env or rds_iam gives none",
                pg.user
            )),
            Err(e) => Err(e.to_string()),
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
