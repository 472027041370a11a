//! Throwaway PostgreSQL clusters.
//!
//! Each cluster lives in its own temporary directory, listens on a unix
//! socket in that directory (and on TCP only when a test asks: a managed
//! service's TLS, or plain loopback, each on a port that was free) and
//! trusts local connections. PostgreSQL refuses to run as root, so under root the
//! server tools run as the `postgres` OS user, which then owns the directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::{Context, bail};
use tempfile::TempDir;

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A running cluster; stopped and deleted when dropped.
pub struct PgCluster {
    dir: TempDir,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub bin_dir: PathBuf,
    log: PathBuf,
    /// Set for a cluster reached over TCP with TLS ([`PgCluster::start_managed`]).
    pub tcp: Option<TcpAccess>,
    /// Set for a cluster that also listens on 127.0.0.1 without TLS
    /// ([`PgCluster::start_loopback`]).
    pub loopback: bool,
}

/// What a cluster listens on besides its unix socket.
enum Listen {
    SocketOnly,
    /// 127.0.0.1 on this port, without TLS.
    Loopback(u16),
    /// `localhost` with TLS.
    Managed(TcpAccess),
}

/// A TCP port nothing on 127.0.0.1 uses now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How a managed-like cluster is reached: `localhost:port`, TLS with a
/// certificate for `localhost` only, from the CA in `ca`.
#[derive(Clone, Debug)]
pub struct TcpAccess {
    pub port: u16,
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// Client authentication as a managed service has it: TLS and SCRAM
/// passwords over TCP; the agents' roles may not use the socket at all
/// (the tests' own sessions may, as any role).
pub const MANAGED_HBA: &str = "local all stagesync_src,stagesync_dst reject\n\
                               local all all trust\n\
                               hostssl all all 127.0.0.1/32 scram-sha-256\n\
                               hostssl all all ::1/128 scram-sha-256\n";

/// Client authentication of a server that also listens on 127.0.0.1:
/// [`HBA`] on the socket, SCRAM passwords over TCP.
pub const LOOPBACK_HBA: &str = "local all postgres trust\n\
                                local all +stagesync_jobs scram-sha-256\n\
                                local all all trust\n\
                                host all all 127.0.0.1/32 scram-sha-256\n";

/// What to do when the PostgreSQL server binaries are missing.
pub const INSTALL_HINT: &str = "install the PostgreSQL server: `sudo apt-get install postgresql` (Debian, Ubuntu), `sudo dnf install postgresql-server` (Fedora, RHEL), `brew install postgresql` (macOS); or set STAGESYNC_PG_BINDIR to the directory holding initdb, pg_ctl, pg_dump and pg_restore";

/// The PostgreSQL server bin directory: `$STAGESYNC_PG_BINDIR` when set,
/// else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("STAGESYNC_PG_BINDIR") {
        let d = PathBuf::from(d);
        if has_server(&d) {
            return Ok(d);
        }
        bail!(
            "STAGESYNC_PG_BINDIR={}: no initdb and pg_ctl there; {INSTALL_HINT}",
            d.display()
        );
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&d) {
            return Ok(d);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d): &(u32, PathBuf)| has_server(d))
        .collect();
    found.sort();
    match found.pop() {
        Some((_, d)) => Ok(d),
        None => bail!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found (looked at pg_config --bindir and /usr/lib/postgresql/*/bin): {INSTALL_HINT}"
        ),
    }
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command run as the `postgres` OS user when we are root.
fn server_command(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Client authentication as on a destination set up for stagesync: the
/// agents' own role trusted on the socket (peer on a real host), the roles
/// a job's restore logs in as by password, everyone else trusted so tests
/// can log in as any role.
pub const HBA: &str = "local all postgres trust\n\
                       local all +stagesync_jobs scram-sha-256\n\
                       local all all trust\n";

impl PgCluster {
    /// `initdb` and start a new cluster.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(Listen::SocketOnly)
    }

    /// A cluster that also listens on 127.0.0.1 without TLS, as a server on
    /// an agent's host may (`postgres.copy_over_tcp`): [`LOOPBACK_HBA`],
    /// and every connection logged with where it came from.
    pub fn start_loopback() -> anyhow::Result<Self> {
        Self::start_with(Listen::Loopback(free_port()?))
    }

    /// A cluster configured like a managed service: it listens on
    /// `localhost` with `ssl = on` and a server certificate that `pki`'s CA
    /// signed for `localhost`, and takes only `hostssl … scram-sha-256`
    /// logins but the tests' own `postgres` on the socket.
    pub fn start_managed(pki: &crate::TestPki) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut req = stagesync_certs::pki::LeafRequest::new(
            stagesync_certs::Kind::Agent,
            &format!("pg-{port}"),
            30,
        );
        req.dns.push("localhost".into());
        let files = pki.issue(&req, &format!("pg-{port}"))?;
        Self::start_with(Listen::Managed(TcpAccess {
            port,
            ca: files.ca,
            cert: files.cert,
            key: files.key,
        }))
    }

    fn start_with(listen: Listen) -> anyhow::Result<Self> {
        let bin_dir = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("stagesync-pg-").tempdir()?;
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir)?;
        let log = dir.path().join("server.log");
        if running_as_root() {
            let pg = nix::unistd::User::from_name("postgres")?
                .context("running as root, PostgreSQL must run as the `postgres` OS user, and there is none: create it (`useradd --system postgres`) or install the server package, which does")?;
            for p in [dir.path(), socket_dir.as_path()] {
                nix::unistd::chown(p, Some(pg.uid), Some(pg.gid))?;
            }
        }
        // Ports only name the socket file; spread them so two clusters in
        // one socket directory could never clash either.
        let port = match &listen {
            Listen::Managed(t) => t.port,
            Listen::Loopback(port) => *port,
            Listen::SocketOnly => {
                20000
                    + ((std::process::id() as u16).wrapping_mul(31) % 20000)
                    + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 5000
            }
        };
        let mut initdb = server_command(&bin_dir.join("initdb"));
        initdb.arg("-D").arg(&data_dir).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        run(initdb, "initdb")?;
        // Overwritten in place: the file keeps its owner and mode.
        let hba = match listen {
            Listen::Managed(_) => MANAGED_HBA,
            Listen::Loopback(_) => LOOPBACK_HBA,
            Listen::SocketOnly => HBA,
        };
        std::fs::write(data_dir.join("pg_hba.conf"), hba)?;
        let loopback = matches!(listen, Listen::Loopback(_));
        let tcp = match listen {
            Listen::Managed(t) => Some(server_key_copy(t, &data_dir)?),
            Listen::Loopback(_) | Listen::SocketOnly => None,
        };
        let cluster = PgCluster {
            dir,
            data_dir,
            socket_dir,
            port,
            bin_dir,
            log,
            tcp,
            loopback,
        };
        cluster.pg_ctl_start()?;
        Ok(cluster)
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let listen = match &self.tcp {
            Some(t) => format!(
                "localhost' -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}",
                t.cert.display(),
                t.key.display()
            ),
            None if self.loopback => "127.0.0.1' -c log_connections='on".into(),
            None => String::new(),
        };
        let opts = format!(
            "-c listen_addresses='{listen}' -k {} -p {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50",
            self.socket_dir.display(),
            self.port
        );
        let mut start = server_command(&self.bin_dir.join("pg_ctl"));
        start
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-o", &opts, "start"]);
        run(start, "pg_ctl start").with_context(|| {
            format!(
                "server log: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }

    /// The temporary directory holding the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connects as `postgres` to `database`.
    pub async fn client(&self, database: &str) -> anyhow::Result<tokio_postgres::Client> {
        self.client_as(database, "postgres").await
    }

    /// Connects as `role` to `database` (over the socket, trusted).
    pub async fn client_as(
        &self,
        database: &str,
        role: &str,
    ) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(role)
            .dbname(database)
            .connect(tokio_postgres::NoTls)
            .await
            .with_context(|| {
                format!("connecting to {database} in {}", self.socket_dir.display())
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs SQL statements in `database`.
    pub async fn exec(&self, database: &str, sql: &str) -> anyhow::Result<()> {
        let client = self.client(database).await?;
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("in {database}: {sql}"))?;
        Ok(())
    }

    /// The first column of every row `sql` returns in `database`, as text.
    pub async fn strings(&self, database: &str, sql: &str) -> anyhow::Result<Vec<String>> {
        let rows = self
            .client(database)
            .await?
            .query(sql, &[])
            .await
            .with_context(|| format!("in {database}: {sql}"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Replaces `pg_hba.conf` with `text` and makes the server read it.
    pub async fn set_hba(&self, text: &str) -> anyhow::Result<()> {
        const RELOADED: &str = "received SIGHUP, reloading configuration files";
        let before = self.server_log().matches(RELOADED).count();
        std::fs::write(self.data_dir.join("pg_hba.conf"), text)?;
        self.exec("postgres", "SELECT pg_reload_conf()").await?;
        // The postmaster reloads after the call returns: wait for its word.
        crate::eventually("the server to reload pg_hba.conf", async || {
            match self.server_log().matches(RELOADED).count() > before {
                true => Ok(()),
                false => Err("not reloaded yet"),
            }
        })
        .await;
        Ok(())
    }

    /// What the server wrote to its log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server immediately (as after a crash).
    pub fn stop(&self) {
        let mut stop = server_command(&self.bin_dir.join("pg_ctl"));
        stop.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.output();
    }
}

/// The server's certificate and key copied into its data directory, owned
/// by the user the server runs as and readable by it alone (PostgreSQL
/// refuses a key others may read).
fn server_key_copy(t: TcpAccess, data_dir: &Path) -> anyhow::Result<TcpAccess> {
    use std::os::unix::fs::PermissionsExt;
    let cert = data_dir.join("server.crt");
    let key = data_dir.join("server.key");
    std::fs::copy(&t.cert, &cert)?;
    std::fs::copy(&t.key, &key)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    if running_as_root() {
        let pg = nix::unistd::User::from_name("postgres")?.context("no postgres user")?;
        for p in [&cert, &key] {
            nix::unistd::chown(p, Some(pg.uid), Some(pg.gid))?;
        }
    }
    Ok(TcpAccess { cert, key, ..t })
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
