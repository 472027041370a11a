//! Opening a lane's session: the connection (the server's unix socket,
//! TCP with TLS, or plain TCP on this host for a source lane when
//! `postgres.copy_over_tcp` is set), the startup message and the login.

use std::net::IpAddr;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::{BLOCK, CONNECT_TIMEOUT, Gather, Wire};
use crate::config::{Endpoint, PostgresConfig};
use crate::pg::message::{error_text, unexpected};
use crate::pg::socket::Socket;

/// Who a session logs in as: the agent's own role and secret, or a role
/// and password of its own (a job's login).
#[derive(Clone, Copy)]
pub enum Login<'a> {
    Agent,
    As { role: &'a str, password: &'a str },
}

/// Which way a session reaches its server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// As `postgres` says: its unix socket, or TCP with TLS.
    Endpoint,
    /// Plain TCP to this address (`postgres.copy_over_tcp`) on the
    /// endpoint's port.
    Loopback(IpAddr),
}

impl Wire {
    /// Connects to `database` as the agent's role.
    pub async fn connect(pg: &PostgresConfig, database: &str) -> Result<Wire, String> {
        Self::connect_as(pg, database, Login::Agent).await
    }

    /// Connects to `database` as the agent's role to read a COPY's rows:
    /// over plain TCP on this host when `postgres.copy_over_tcp` is set
    /// (the kernel then wakes the agent once per [`super::GATHER`] bytes
    /// of rows, not for each of the server's 8 KiB writes).
    pub async fn connect_for_rows(pg: &PostgresConfig, database: &str) -> Result<Wire, String> {
        let route = match pg.copy_over_tcp {
            Some(ip) => Route::Loopback(ip),
            None => Route::Endpoint,
        };
        Self::connect_via(pg, database, Login::Agent, route).await
    }

    /// Connects to `database` as `login`; errors name the server and the
    /// role, never a secret.
    pub async fn connect_as(
        pg: &PostgresConfig,
        database: &str,
        login: Login<'_>,
    ) -> Result<Wire, String> {
        Self::connect_via(pg, database, login, Route::Endpoint).await
    }

    async fn connect_via(
        pg: &PostgresConfig,
        database: &str,
        login: Login<'_>,
        route: Route,
    ) -> Result<Wire, String> {
        let role = match login {
            Login::Agent => pg.user.as_str(),
            Login::As { role, .. } => role,
        };
        let at = || match route {
            Route::Loopback(ip) => format!(
                "PostgreSQL at {} (postgres.copy_over_tcp) as role {role:?}",
                std::net::SocketAddr::new(ip, pg.endpoint.port())
            ),
            Route::Endpoint => {
                format!("PostgreSQL at {} as role {role:?}", pg.endpoint.describe())
            }
        };
        let opened = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Self::open(pg, database, role, login, route),
        )
        .await;
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

    async fn open(
        pg: &PostgresConfig,
        database: &str,
        role: &str,
        login: Login<'_>,
        route: Route,
    ) -> Result<Wire, String> {
        // (The configuration allows a loopback route beside a socket only.)
        let stream = match (&pg.endpoint, route) {
            (Endpoint::Socket { port, .. }, Route::Loopback(ip)) => {
                let tcp = TcpStream::connect((ip, *port)).await.map_err(|e| {
                    format!(
                        "{e} (the server must listen on {ip} (listen_addresses) and pg_hba.conf let the role in from there)"
                    )
                })?;
                // Queries are small and answered at once.
                let _ = tcp.set_nodelay(true);
                Socket::Tcp(tcp)
            }
            (Endpoint::Socket { dir, port }, _) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Socket::Unix(
                    UnixStream::connect(&path)
                        .await
                        .map_err(|e| e.to_string())?,
                )
            }
            (Endpoint::Tcp { host, port, tls }, _) => {
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
                Socket::Other(Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?,
                ))
            }
        };
        let mut wire = Wire {
            stream,
            rbuf: BytesMut::with_capacity(BLOCK),
            pending: 0,
            scanned: 0,
            gather: Gather::Unable,
            taken: 0,
        };
        if matches!(wire.stream, Socket::Tcp(_)) {
            wire.gather = Gather::Off;
        }
        let mut out = BytesMut::new();
        let params = [
            ("user", role),
            ("database", database),
            ("application_name", "stagesync-agent"),
            // Both ends of a lane read and write COPY text as UTF-8.
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params, &mut out).map_err(|e| e.to_string())?;
        wire.send(&out).await?;
        wire.authenticate(pg, role, login).await?;
        wire.until_ready(None).await?;
        Ok(wire)
    }

    /// Answers the server's authentication requests until it says OK.
    async fn authenticate(
        &mut self,
        pg: &PostgresConfig,
        role: &str,
        login: Login<'_>,
    ) -> Result<(), String> {
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
                    let password = Self::password(pg, login).await?;
                    frontend::password_message(password.as_bytes(), &mut out)
                        .map_err(|e| e.to_string())?;
                }
                Some(5) if data.len() == 4 => {
                    let password = Self::password(pg, login).await?;
                    let salt = [data[0], data[1], data[2], data[3]];
                    let hash = md5_hash(role.as_bytes(), password.as_bytes(), salt);
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
                    let password = Self::password(pg, login).await?;
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

    /// The login's password, for a server that asks for one.
    async fn password(pg: &PostgresConfig, login: Login<'_>) -> Result<String, String> {
        if let Login::As { password, .. } = login {
            return Ok(password.to_string());
        }
        match pg.secret.password(&pg.user).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(format!(
                "the server asks role {:?} for a password and postgres.password_file, password_env or rds_iam gives none",
                pg.user
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}
