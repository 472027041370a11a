//! A test-only HTTP proxy in front of an S3 server (loopback in, loopback
//! out). It records every request, and on command answers some with
//! 503 SlowDown, resets some connections, or denies writes to chosen keys.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What to break. Zero disables a fault.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Answer every Nth request with 503 SlowDown.
    pub slow_down_every: u64,
    /// Reset every Nth new connection as soon as it sends its request.
    pub reset_every: u64,
    /// Answer PUTs whose path contains this with 403 AccessDenied.
    pub deny_put_containing: Option<String>,
    /// Answer HEADs sent by stagesync's lean path with 403 AccessDenied.
    pub deny_lean_heads: bool,
}

#[derive(Default)]
pub struct Stats {
    /// "METHOD path?query" of every request that reached the proxy.
    pub requests: Mutex<Vec<String>>,
    pub slow_downs: AtomicU64,
    pub resets: AtomicU64,
    pub denied: AtomicU64,
    /// HEADs of objects sent by stagesync's lean path (its own user agent).
    pub lean_heads: AtomicU64,
    /// HEADs of objects sent through the AWS SDK.
    pub sdk_heads: AtomicU64,
    connections: AtomicU64,
    seen: AtomicU64,
}

impl Stats {
    /// Requests that write or delete: PUT, POST, DELETE.
    pub fn writes(&self) -> Vec<String> {
        self.requests
            .lock()
            .expect("stats")
            .iter()
            .filter(|r| !r.starts_with("GET ") && !r.starts_with("HEAD "))
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        self.requests.lock().expect("stats").clear();
    }
}

pub struct Proxy {
    pub endpoint: String,
    pub stats: Arc<Stats>,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(status: u16, text: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    response
        .headers_mut()
        .insert("content-type", "application/xml".parse().expect("header"));
    response
        .headers_mut()
        .insert("connection", "close".parse().expect("header"));
    response
}

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
const DENIED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";

pub async fn start(upstream: SocketAddr, faults: Faults) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let stats = Arc::new(Stats::default());
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let faults = Arc::new(faults);
    let shared = stats.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
            if faults.reset_every > 0 && n.is_multiple_of(faults.reset_every) {
                let stats = shared.clone();
                tokio::spawn(async move {
                    // Wait until the client has sent its request, then
                    // close with SO_LINGER 0: the client sees a TCP RST.
                    let mut buf = [0u8; 1];
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), socket.peek(&mut buf)).await;
                    #[allow(deprecated)]
                    let _ = socket.set_linger(Some(Duration::ZERO));
                    drop(socket);
                    stats.resets.fetch_add(1, Ordering::SeqCst);
                });
                continue;
            }
            let client = client.clone();
            let faults = faults.clone();
            let stats = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let client = client.clone();
                    let faults = faults.clone();
                    let stats = stats.clone();
                    async move { forward(request, upstream, &client, &faults, &stats).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    Proxy {
        endpoint: format!("http://{addr}"),
        stats,
    }
}

async fn forward(
    mut request: Request<Incoming>,
    upstream: SocketAddr,
    client: &Client<HttpConnector, Incoming>,
    faults: &Faults,
    stats: &Stats,
) -> Result<Response<Body>, hyper::Error> {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    stats
        .requests
        .lock()
        .expect("stats")
        .push(format!("{} {path}", request.method()));
    let lean = request
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|agent| agent.starts_with("stagesync/"));
    // Path style: "/bucket" is the bucket, "/bucket/key" an object.
    let object = path
        .trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(_, key)| !key.is_empty());
    if request.method() == hyper::Method::HEAD && object {
        match lean {
            true => stats.lean_heads.fetch_add(1, Ordering::SeqCst),
            false => stats.sdk_heads.fetch_add(1, Ordering::SeqCst),
        };
        if lean && faults.deny_lean_heads {
            stats.denied.fetch_add(1, Ordering::SeqCst);
            return Ok(full(403, DENIED));
        }
    }
    let n = stats.seen.fetch_add(1, Ordering::SeqCst) + 1;
    if faults.slow_down_every > 0 && n.is_multiple_of(faults.slow_down_every) {
        stats.slow_downs.fetch_add(1, Ordering::SeqCst);
        return Ok(full(503, SLOW_DOWN));
    }
    if let Some(deny) = &faults.deny_put_containing
        && request.method() == hyper::Method::PUT
        && path.contains(deny.as_str())
    {
        stats.denied.fetch_add(1, Ordering::SeqCst);
        return Ok(full(403, DENIED));
    }
    // The Host header stays as the client signed it; only the socket moves.
    *request.uri_mut() = format!("http://{upstream}{path}").parse().expect("uri");
    match client.request(request).await {
        Ok(response) => Ok(response.map(|b| b.boxed())),
        Err(_) => Ok(full(502, SLOW_DOWN)),
    }
}
