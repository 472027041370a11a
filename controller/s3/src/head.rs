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
//! retries and the errors a user sees. An answer showing that this path
//! cannot work against the endpoint (denied, a redirect, a TLS failure)
//! turns it off for the rest of the run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::Client;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use tokio::sync::RwLock;

/// The key presigned to learn the shape of a bucket's URLs. Nothing is sent.
const PROBE: &str = "stagesync-lean-head-probe";
/// Characters of a key segment sent as they are, as the SDK does for S3.
const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Cached credentials are fetched again this long before they expire.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);
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

    /// The URL of one key: each `/`-separated segment percent-encoded.
    pub(crate) fn url(&self, key: &str) -> String {
        let mut url = self.base.clone();
        for (i, segment) in key.split('/').enumerate() {
            if i > 0 {
                url.push('/');
            }
            url.extend(utf8_percent_encode(segment, KEY_SEGMENT));
        }
        url
    }
}

/// The lean HEAD path for one bucket of one client.
pub(crate) struct LeanHead {
    shape: Shape,
    http: HttpClient<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    provider: SharedCredentialsProvider,
    credentials: RwLock<Option<Credentials>>,
    enabled: AtomicBool,
}

impl LeanHead {
    /// Learns a bucket's URL shape from the SDK. None when the client has
    /// no plain credentials provider or its requests are not plain SigV4.
    pub(crate) async fn learn(
        client: &Client,
        provider: SharedCredentialsProvider,
        bucket: &str,
    ) -> Option<LeanHead> {
        let presigning = PresigningConfig::expires_in(Duration::from_secs(60)).ok()?;
        let presigned = client
            .head_object()
            .bucket(bucket)
            .key(PROBE)
            .presigned(presigning)
            .await
            .ok()?;
        let headers: Vec<&str> = presigned.headers().map(|(name, _)| name).collect();
        let shape = Shape::from_presigned(presigned.uri(), &headers)?;
        tracing::debug!(bucket, base = %shape.base, "lean HEADs for comparing objects");
        Some(LeanHead {
            http: http_client()?,
            shape,
            provider,
            credentials: RwLock::new(None),
            enabled: AtomicBool::new(true),
        })
    }

    /// The ETag and user metadata of one key, or a request to ask the SDK.
    pub(crate) async fn head(&self, key: &str) -> LeanAnswer {
        if !self.enabled.load(Ordering::Relaxed) {
            return LeanAnswer::AskSdk;
        }
        let Some(credentials) = self.credentials().await else {
            return self.off("no credentials");
        };
        let Some(request) = self.signed(key, credentials) else {
            return self.off("cannot sign");
        };
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request)).await
        {
            Ok(Ok(response)) => response,
            // A reset or a timeout may be the network's moment, or a TLS
            // setup this client does not share with the SDK's: stop asking.
            Ok(Err(e)) => return self.off(&e.to_string()),
            Err(_) => return self.off("timed out"),
        };
        let status = response.status();
        if status.is_success() {
            if !response.headers().contains_key(http::header::ETAG) {
                // Some servers leave the ETag out of HEAD; the SDK path
                // then reads it with a ranged GET.
                return self.off("no ETag in HEAD");
            }
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

    fn off(&self, why: &str) -> LeanAnswer {
        if self.enabled.swap(false, Ordering::Relaxed) {
            tracing::debug!(base = %self.shape.base, why, "lean HEADs off; the SDK asks instead");
        }
        LeanAnswer::AskSdk
    }

    fn signed(&self, key: &str, credentials: Credentials) -> Option<http::Request<Empty<Bytes>>> {
        let url = self.shape.url(key);
        let uri: http::Uri = url.parse().ok()?;
        let host = uri.authority()?.as_str().to_string();
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
            [("host", host.as_str())].into_iter(),
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
        if let Some(c) = cached.as_ref().filter(|c| fresh(c)) {
            return Some(c.clone());
        }
        let c = self.provider.provide_credentials().await.ok()?;
        *cached = Some(c.clone());
        Some(c)
    }
}

fn found(headers: &http::HeaderMap) -> LeanAnswer {
    let Some(etag) = headers
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
    else {
        return LeanAnswer::AskSdk;
    };
    let mut metadata = HashMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("x-amz-meta-") {
            let Ok(value) = value.to_str() else {
                return LeanAnswer::AskSdk;
            };
            metadata.insert(key.to_string(), value.to_string());
        }
    }
    LeanAnswer::Found {
        etag: etag.to_string(),
        metadata,
    }
}

/// An HTTP client for one lean path: TLS as the SDK's (rustls with ring,
/// the system's roots), plain HTTP for plain endpoints. Each path has its
/// own, so no pooled connection outlives the runtime that opened it.
fn http_client() -> Option<HttpClient<HttpsConnector<HttpConnector>, Empty<Bytes>>> {
    static TLS: OnceLock<Option<rustls::ClientConfig>> = OnceLock::new();
    let tls = TLS
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                tracing::debug!("no system root certificates; lean HEADs only over http");
            }
            Some(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .ok()?
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()?;
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Some(
        HttpClient::builder(TokioExecutor::new())
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
            "x-amz-meta-odd",
            http::HeaderValue::from_bytes(b"caf\xe9").expect("opaque"),
        );
        assert_eq!(found(&headers), LeanAnswer::AskSdk);
    }
}
