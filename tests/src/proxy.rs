//! A TCP fault proxy on loopback: it forwards bytes between a client and a
//! server and, on command, throttles them, stalls (keeps the sockets open
//! but forwards nothing, like a dead link), or cuts every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Control {
    /// Bytes per second in each direction; 0 = unlimited.
    rate: AtomicU64,
    stalled: AtomicBool,
    connections: AtomicUsize,
    forwarded: AtomicU64,
    /// Chunks read and let through the stall check but not yet counted in
    /// `forwarded`.
    in_flight: AtomicUsize,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    ctl: Arc<Control>,
    cut: std::sync::Mutex<CancellationToken>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Starts a proxy to `target` on 127.0.0.1.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ctl = Arc::new(Control::default());
        let stop = CancellationToken::new();
        let proxy = FaultProxy {
            addr,
            ctl: ctl.clone(),
            cut: std::sync::Mutex::new(CancellationToken::new()),
            stop: stop.clone(),
        };
        let cut = proxy.cut_token();
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                ctl.connections.fetch_add(1, Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let cut = cut.clone();
                tokio::spawn(pump(cr, sw, ctl.clone(), cut.clone()));
                tokio::spawn(pump(sr, cw, ctl.clone(), cut));
            }
        });
        Ok(proxy)
    }

    fn cut_token(&self) -> CancellationToken {
        self.cut.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Limits each direction to `bytes_per_sec` (0: no limit).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.ctl.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Stops forwarding without closing anything: a blackhole.
    pub fn stall(&self) {
        self.ctl.stalled.store(true, Ordering::SeqCst);
    }

    /// Forwards again after a [`stall`](Self::stall).
    pub fn resume(&self) {
        self.ctl.stalled.store(false, Ordering::SeqCst);
    }

    /// Closes every proxied connection.
    pub fn cut(&self) {
        self.cut_token().cancel();
    }

    pub fn connections(&self) -> usize {
        self.ctl.connections.load(Ordering::SeqCst)
    }

    /// Stalled, with the last chunks let through before the stall written:
    /// from now on [`forwarded`](Self::forwarded) stays where it is.
    pub fn quiet(&self) -> bool {
        self.ctl.stalled.load(Ordering::SeqCst) && self.ctl.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Bytes forwarded so far, both directions.
    pub fn forwarded(&self) -> u64 {
        self.ctl.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    ctl: Arc<Control>,
    cut: CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            _ = cut.cancelled() => return,
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
        };
        // Counted in flight before the stall is checked, so that once a
        // stall is set and nothing is in flight, nothing more goes through.
        ctl.in_flight.fetch_add(1, Ordering::SeqCst);
        while ctl.stalled.load(Ordering::SeqCst) {
            ctl.in_flight.fetch_sub(1, Ordering::SeqCst);
            tokio::select! {
                _ = cut.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            ctl.in_flight.fetch_add(1, Ordering::SeqCst);
        }
        let written = to.write_all(&buf[..n]).await;
        if written.is_ok() {
            ctl.forwarded.fetch_add(n as u64, Ordering::SeqCst);
        }
        ctl.in_flight.fetch_sub(1, Ordering::SeqCst);
        if written.is_err() {
            return;
        }
        let rate = ctl.rate.load(Ordering::SeqCst);
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
    }
    let _ = to.shutdown().await;
}

/// Process ids of `pg_dump`/`pg_restore` working on `cluster` (they get
/// its socket directory, or `localhost` when it is reached over TCP, as
/// `--host=`, and its port as `--port=`).
pub fn tool_processes(cluster: &crate::PgCluster) -> Vec<u32> {
    let host = match &cluster.tcp {
        Some(_) => "--host=localhost".to_string(),
        None => format!("--host={}", cluster.socket_dir.display()),
    };
    let port = format!("--port={}", cluster.port);
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_tool = args
            .first()
            .is_some_and(|a| a.ends_with("/pg_dump") || a.ends_with("/pg_restore"));
        if is_tool && args.contains(&host) && args.contains(&port) {
            pids.push(pid);
        }
    }
    pids
}
