//! A lean HEAD for comparing objects.
//!
//! When a server's listings carry no ETags, deciding whether an object
//! changed takes one HEAD per object on each side, so a no-change run over
//! a big bucket is almost nothing but HEADs. Through the SDK's full request
//! pipeline each of them costs the client several times what the request
//! itself does. This path asks the SDK once per bucket where its requests
//! go (by presigning one HEAD), signs each HEAD with the SDK's own SigV4
//! signer, and sends it on a pooled HTTP/1.1 client.
//!
//! It only ever answers "here is the ETag and metadata" or "ask the SDK":
//! anything but a 200 with an ETag goes through the SDK again, which owns
//! retries and the errors a user sees. A 404, 429 or 5xx is asked again for
//! that object only. Any other answer (a 403 or 400, a redirect, a 200
//! without an ETag), credentials that cannot be had, and a network failure
//! before the first success turn the path off for the rest of the run: one
//! object denied to it is enough.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::Client;
use aws_sdk_s3::presigning::{PresignedRequest, PresigningConfig};
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioTimer;
use percent_encoding::percent_decode_str;
use tokio::sync::RwLock;

use crate::spec::encode_key;

/// The key presigned to learn the shape of a bucket's URLs. Nothing is sent.
const PROBE: &str = "stagesync-lean-head-probe";
/// The whole of one lean HEAD, credentials included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Cached credentials are fetched again once this close to expiring (a
/// signed HEAD is sent at once; the SDK's own cache refreshes earlier).
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(10);
/// Presign query parameters this path knows; any other means the SDK would
/// send something this path does not.
const KNOWN_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];
const USER_AGENT: &str = concat!("stagesync/", env!("CARGO_PKG_VERSION"));

/// What a lean HEAD found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LeanAnswer {
    Found {
        etag: String,
        metadata: HashMap<String, String>,
    },
    /// Ask the SDK instead.
    AskSdk,
}

/// Where one bucket's requests go, as the SDK addresses and signs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Scheme, authority and path up to where the key starts.
    pub base: String,
    pub region: String,
    pub service: String,
}

impl Shape {
    /// Reads a presigned HEAD of [`PROBE`]. None for anything this path
    /// does not sign the way the SDK would (another algorithm, extra signed
    /// headers, a path that does not end in the key).
    pub(crate) fn from_presigned(uri: &str, signed_headers: &[&str]) -> Option<Shape> {
        if signed_headers
            .iter()
            .any(|h| !h.eq_ignore_ascii_case("host"))
        {
            return None;
        }
        let uri: http::Uri = uri.parse().ok()?;
        let scheme = uri.scheme_str()?;
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let authority = uri.authority()?;
        let prefix = uri.path().strip_suffix(PROBE)?;
        if !prefix.ends_with('/') {
            return None;
        }
        let mut algorithm = None;
        let mut scope = None;
        for pair in uri.query()?.split('&') {
            let (name, value) = pair.split_once('=')?;
            let value = percent_decode_str(value).decode_utf8().ok()?;
            match name {
                "X-Amz-Algorithm" => algorithm = Some(value.into_owned()),
                "X-Amz-Credential" => scope = Some(value.into_owned()),
                "X-Amz-SignedHeaders" if value != "host" => return None,
                _ if !KNOWN_PARAMS.contains(&name) => return None,
                _ => {}
            }
        }
        if algorithm.as_deref() != Some("AWS4-HMAC-SHA256") {
            return None;
        }
        // access-key/date/region/service/aws4_request
        let scope = scope?;
        let parts: Vec<&str> = scope.rsplitn(4, '/').collect();
        let [terminator, service, region, _] = parts.as_slice() else {
            return None;
        };
        if *terminator != "aws4_request" || region.is_empty() || service.is_empty() {
            return None;
        }
        Some(Shape {
            base: format!("{scheme}://{authority}{prefix}"),
            region: region.to_string(),
            service: service.to_string(),
        })
    }

    /// Presigns a HEAD of [`PROBE`] with the SDK (nothing is sent).
    async fn learn(client: &Client, bucket: &str) -> Option<Shape> {
        let presigned = presign(client, bucket, PROBE).await?;
        let headers: Vec<&str> = presigned.headers().map(|(name, _)| name).collect();
        Shape::from_presigned(presigned.uri(), &headers)
    }

    /// The URL of one key, encoded as the SDK encodes keys.
    pub(crate) fn url(&self, key: &str) -> String {
        format!("{}{}", self.base, encode_key(key))
    }
}

async fn presign(client: &Client, bucket: &str, key: &str) -> Option<PresignedRequest> {
    let presigning = PresigningConfig::expires_in(Duration::from_secs(60)).ok()?;
    client
        .head_object()
        .bucket(bucket)
        .key(key)
        .presigned(presigning)
        .await
        .ok()
}

/// The lean HEAD path for one bucket of one client.
pub(crate) struct LeanHead {
    shape: Shape,
    /// The `host` header every request is signed with (the base's authority).
    host: String,
    http: HttpClient<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    provider: SharedCredentialsProvider,
    credentials: RwLock<Option<Credentials>>,
    enabled: AtomicBool,
    /// Whether any lean HEAD has been answered: after that, a network
    /// failure is the network's moment, not a sign this path cannot work.
    answered: AtomicBool,
}

impl LeanHead {
    /// Learns a bucket's URL shape from the SDK. None when its requests
    /// are not plain SigV4 on a plain URL.
    pub(crate) async fn learn(
        client: &Client,
        provider: SharedCredentialsProvider,
        bucket: &str,
    ) -> Option<LeanHead> {
        let shape = Shape::learn(client, bucket).await?;
        let base: http::Uri = shape.base.parse().ok()?;
        let host = base.authority()?.as_str().to_string();
        tracing::debug!(bucket, base = %shape.base, "lean HEADs for comparing objects");
        Some(LeanHead {
            http: http_client()?,
            shape,
            host,
            provider,
            credentials: RwLock::new(None),
            enabled: AtomicBool::new(true),
            answered: AtomicBool::new(false),
        })
    }

    /// The ETag and user metadata of one key, or a request to ask the SDK.
    pub(crate) async fn head(&self, key: &str) -> LeanAnswer {
        if !self.enabled.load(Ordering::Relaxed) {
            return LeanAnswer::AskSdk;
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, self.ask(key)).await {
            Ok(answer) => answer,
            Err(_) => self.failed("timed out"),
        }
    }

    async fn ask(&self, key: &str) -> LeanAnswer {
        let Some(credentials) = self.credentials().await else {
            return self.off("no credentials");
        };
        let Some(request) = self.signed(key, credentials) else {
            return self.off("cannot sign");
        };
        let response = match self.http.request(request).await {
            Ok(response) => response,
            Err(e) => return self.failed(&e.to_string()),
        };
        let status = response.status();
        if status.is_success() {
            if !response.headers().contains_key(http::header::ETAG) {
                // Some servers leave the ETag out of HEAD; the SDK path
                // then reads it with a ranged GET.
                return self.off("no ETag in HEAD");
            }
            self.answered.store(true, Ordering::Relaxed);
            return found(response.headers());
        }
        // Missing objects, throttling and server errors: the SDK retries
        // and reports them. Anything else says this path is not welcome.
        if !(status == http::StatusCode::NOT_FOUND
            || status == http::StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error())
        {
            return self.off(status.as_str());
        }
        LeanAnswer::AskSdk
    }

    /// A network failure or timeout: before any answer it may be a TLS or
    /// proxy setup this client does not share with the SDK's, so stop;
    /// after one, ask the SDK for this object only.
    fn failed(&self, why: &str) -> LeanAnswer {
        if self.answered.load(Ordering::Relaxed) {
            return LeanAnswer::AskSdk;
        }
        self.off(why)
    }

    fn off(&self, why: &str) -> LeanAnswer {
        if self.enabled.swap(false, Ordering::Relaxed) {
            tracing::debug!(base = %self.shape.base, why, "lean HEADs off; the SDK asks instead");
        }
        LeanAnswer::AskSdk
    }

    fn signed(&self, key: &str, credentials: Credentials) -> Option<http::Request<Empty<Bytes>>> {
        let url = self.shape.url(key);
        let uri: http::Uri = url.parse().ok()?;
        let identity: Identity = credentials.into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.shape.region)
            .name(&self.shape.service)
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .ok()?
            .into();
        let signable = SignableRequest::new(
            "HEAD",
            &url,
            [("host", self.host.as_str())].into_iter(),
            SignableBody::Bytes(&[]),
        )
        .ok()?;
        let (instructions, _) = sign(signable, &params).ok()?.into_parts();
        let mut request = http::Request::builder()
            .method(http::Method::HEAD)
            .uri(uri)
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(Empty::new())
            .ok()?;
        instructions.apply_to_request_http1x(&mut request);
        Some(request)
    }

    async fn credentials(&self) -> Option<Credentials> {
        let fresh = |c: &Credentials| {
            c.expiry()
                .is_none_or(|at| at > SystemTime::now() + CREDENTIALS_MARGIN)
        };
        if let Some(c) = self.credentials.read().await.as_ref().filter(|c| fresh(c)) {
            return Some(c.clone());
        }
        let mut cached = self.credentials.write().await;
        // Those who waited for a fetch that failed stop here, at once.
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(c) = cached.as_ref().filter(|c| fresh(c)) {
            return Some(c.clone());
        }
        let fetched = tokio::time::timeout(CONNECT_TIMEOUT, self.provider.provide_credentials());
        let Ok(Ok(c)) = fetched.await else {
            self.off("no credentials");
            return None;
        };
        *cached = Some(c.clone());
        Some(c)
    }
}

fn found(headers: &http::HeaderMap) -> LeanAnswer {
    // `head` has checked there is one; this catches one that is not text.
    let Some(etag) = headers
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
    else {
        return LeanAnswer::AskSdk;
    };
    // As the SDK reads metadata: UTF-8 values, one header per name (it
    // refuses repeated ones; so does this, by asking it).
    let mut metadata = HashMap::new();
    for name in headers.keys() {
        let Some(key) = name.as_str().strip_prefix("x-amz-meta-") else {
            continue;
        };
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return LeanAnswer::AskSdk;
        };
        let Ok(value) = std::str::from_utf8(value.as_bytes()) else {
            return LeanAnswer::AskSdk;
        };
        metadata.insert(key.to_string(), value.to_string());
    }
    LeanAnswer::Found {
        etag: etag.to_string(),
        metadata,
    }
}

/// An HTTP/1.1 client for one lean path: rustls with ring and the system's
/// roots, as the SDK's client (which also offers HTTP/2 and trims the
/// cipher suites); plain HTTP for plain endpoints. Each path has its own,
/// so no pooled connection outlives the runtime that opened it.
fn http_client() -> Option<HttpClient<HttpsConnector<HttpConnector>, Empty<Bytes>>> {
    let connector = crate::https::connector(crate::https::system_tls()?, CONNECT_TIMEOUT);
    Some(
        HttpClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRESIGNED_PATH_STYLE: &str = "http://127.0.0.1:9000/media%20bucket/stagesync-lean-head-probe?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261125%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261125T120000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=abc";

    #[test]
    fn a_path_style_presign_gives_base_region_and_service() {
        let shape = Shape::from_presigned(PRESIGNED_PATH_STYLE, &["host"]).expect("shape");
        assert_eq!(
            shape,
            Shape {
                base: "http://127.0.0.1:9000/media%20bucket/".into(),
                region: "us-east-1".into(),
                service: "s3".into(),
            }
        );
    }

    #[test]
    fn a_virtual_hosted_presign_keeps_the_bucket_in_the_host() {
        let uri = "https://media.s3.eu-west-1.amazonaws.com/stagesync-lean-head-probe?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261125%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-SignedHeaders=host&X-Amz-Signature=abc";
        let shape = Shape::from_presigned(uri, &["host"]).expect("shape");
        assert_eq!(shape.base, "https://media.s3.eu-west-1.amazonaws.com/");
        assert_eq!(shape.region, "eu-west-1");
    }

    #[test]
    fn presigns_this_path_cannot_follow_are_refused() {
        let sigv4a = PRESIGNED_PATH_STYLE.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256");
        assert_eq!(Shape::from_presigned(&sigv4a, &["host"]), None);
        let more_headers =
            PRESIGNED_PATH_STYLE.replace("SignedHeaders=host", "SignedHeaders=host%3Bx-amz-foo");
        assert_eq!(Shape::from_presigned(&more_headers, &["host"]), None);
        assert_eq!(
            Shape::from_presigned(PRESIGNED_PATH_STYLE, &["host", "x-amz-security-token"]),
            None
        );
        let other_key = PRESIGNED_PATH_STYLE.replace("lean-head-probe", "something-else");
        assert_eq!(Shape::from_presigned(&other_key, &["host"]), None);
        let no_scope = PRESIGNED_PATH_STYLE.replace("X-Amz-Credential", "X-Amz-Other");
        assert_eq!(Shape::from_presigned(&no_scope, &["host"]), None);
        let express = format!("{PRESIGNED_PATH_STYLE}&X-Amz-S3session-Token=t");
        assert_eq!(Shape::from_presigned(&express, &["host"]), None);
        let extra = format!("{PRESIGNED_PATH_STYLE}&x-id=HeadObject");
        assert_eq!(Shape::from_presigned(&extra, &["host"]), None);
    }

    #[test]
    fn keys_are_encoded_segment_by_segment() {
        let shape = Shape::from_presigned(PRESIGNED_PATH_STYLE, &["host"]).expect("shape");
        assert_eq!(
            shape.url("unicodé/ファイル.bin"),
            "http://127.0.0.1:9000/media%20bucket/unicod%C3%A9/%E3%83%95%E3%82%A1%E3%82%A4%E3%83%AB.bin"
        );
        assert_eq!(
            shape.url("with space+plus%20?q~a_b-c.d"),
            "http://127.0.0.1:9000/media%20bucket/with%20space%2Bplus%2520%3Fq~a_b-c.d"
        );
        assert_eq!(
            shape.url("a//b/"),
            "http://127.0.0.1:9000/media%20bucket/a//b/"
        );
    }

    fn sdk_client(endpoint: Option<&str>, region: &str) -> Client {
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_s3::config::Region::new(region.to_string()))
            .credentials_provider(Credentials::new("AKID", "secret", None, None, "test"));
        if let Some(endpoint) = endpoint {
            config = config.endpoint_url(endpoint).force_path_style(true);
        }
        Client::from_conf(config.build())
    }

    /// Whatever the SDK's key encoding is, the lean path's URL for a key is
    /// the one the SDK would request: on a custom endpoint (path style) and
    /// on AWS (virtual-hosted style).
    #[tokio::test]
    async fn urls_are_the_sdks_for_odd_keys() {
        let keys = [
            "plain.txt",
            "with space.txt",
            "unicodé/ファイル.bin",
            "plus+sign",
            "percent%20literal",
            "percent%2Fslash",
            "question?mark",
            "hash#and&amp=eq;semi",
            "tilde~_-.ok",
            "/leading-slash",
            "a//double",
            "./dot/../dots",
            "trailing/",
            "deep/a/b/c/d/e/f/g/h/nested.txt",
        ];
        for (client, region, base) in [
            (
                sdk_client(Some("http://127.0.0.1:9000"), "us-east-1"),
                "us-east-1",
                "http://127.0.0.1:9000/media-bucket/",
            ),
            (
                sdk_client(None, "eu-west-1"),
                "eu-west-1",
                "https://media-bucket.s3.eu-west-1.amazonaws.com/",
            ),
        ] {
            let shape = Shape::learn(&client, "media-bucket").await.expect("shape");
            assert_eq!(shape.base, base);
            assert_eq!(shape.region, region);
            assert_eq!(shape.service, "s3");
            for key in keys {
                let presigned = presign(&client, "media-bucket", key)
                    .await
                    .expect("presign");
                let sdk_url = presigned.uri().split_once('?').expect("query").0;
                assert_eq!(shape.url(key), sdk_url, "key {key:?}");
            }
        }
    }

    #[test]
    fn an_answer_needs_an_etag_and_readable_metadata() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(found(&headers), LeanAnswer::AskSdk);
        headers.insert(http::header::ETAG, "\"abc\"".parse().expect("etag"));
        headers.insert("x-amz-meta-stagesync-md5", "0123".parse().expect("meta"));
        headers.insert("content-type", "text/plain".parse().expect("type"));
        assert_eq!(
            found(&headers),
            LeanAnswer::Found {
                etag: "\"abc\"".into(),
                metadata: HashMap::from([("stagesync-md5".into(), "0123".into())]),
            }
        );
        headers.insert(
            "x-amz-meta-utf8",
            http::HeaderValue::from_bytes("café".as_bytes()).expect("utf-8"),
        );
        let LeanAnswer::Found { metadata, .. } = found(&headers) else {
            panic!("UTF-8 metadata is read, as the SDK reads it");
        };
        assert_eq!(metadata["utf8"], "café");
        headers.append("x-amz-meta-utf8", "again".parse().expect("meta"));
        assert_eq!(found(&headers), LeanAnswer::AskSdk, "repeated metadata");
        headers.remove("x-amz-meta-utf8");
        headers.insert(
            "x-amz-meta-odd",
            http::HeaderValue::from_bytes(b"caf\xe9").expect("opaque"),
        );
        assert_eq!(found(&headers), LeanAnswer::AskSdk, "not UTF-8");
    }
}
