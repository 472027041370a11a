//! S3 clients, one per (profile, region, endpoint), built once and shared.
//!
//! TLS is rustls with ring (already in the tree for the fleet's mTLS), so
//! building the engine needs no C toolchain for aws-lc. Credentials come
//! only from the standard AWS chain; a named profile is checked to exist up
//! front so a typo is reported as such instead of as "access denied".

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_runtime::env_config::file::{
    EnvConfigFileKind as ProfileFileKind, EnvConfigFiles as ProfileFiles,
};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_types::os_shim_internal::{Env, Fs};
use tokio::sync::Mutex;

use crate::error::{SyncError, Target};
use crate::spec::{ProfileFilePaths, RetrySettings, SideConfig};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for a server-side copy of a 5 GiB object to answer.
const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// Used when neither the side nor the profile names a region: S3-compatible
/// servers accept any region, and AWS redirects to the right one.
const FALLBACK_REGION: &str = "us-east-1";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    side: SideConfig,
    files: ProfileFilePaths,
    retry: RetrySettings,
}

/// Builds and caches clients. Cheap to share: SDK clients are `Arc`s inside.
#[derive(Default)]
pub struct ClientPool {
    clients: Mutex<HashMap<Key, Built>>,
}

/// A client and the credentials chain it signs with (the SDK keeps the
/// chain to itself once the client is built).
#[derive(Clone)]
pub(crate) struct Built {
    pub client: Client,
    pub credentials: Option<SharedCredentialsProvider>,
}

impl ClientPool {
    pub fn new() -> Self {
        ClientPool::default()
    }

    /// The client for one side, building it on first use.
    pub(crate) async fn client(
        &self,
        side: &SideConfig,
        files: &ProfileFilePaths,
        retry: RetrySettings,
        target: &Target,
    ) -> Result<Client, SyncError> {
        Ok(self.built(side, files, retry, target).await?.client)
    }

    /// The client for one side with its credentials chain.
    pub(crate) async fn built(
        &self,
        side: &SideConfig,
        files: &ProfileFilePaths,
        retry: RetrySettings,
        target: &Target,
    ) -> Result<Built, SyncError> {
        let key = Key {
            side: side.clone(),
            files: files.clone(),
            retry,
        };
        let mut clients = self.clients.lock().await;
        if let Some(built) = clients.get(&key) {
            return Ok(built.clone());
        }
        let built = build(side, files, retry, target).await?;
        clients.insert(key, built.clone());
        Ok(built)
    }
}

fn profile_files(paths: &ProfileFilePaths) -> ProfileFiles {
    let mut builder = ProfileFiles::builder();
    match &paths.config {
        Some(path) => builder = builder.with_file(ProfileFileKind::Config, path),
        None => builder = builder.include_default_config_file(true),
    }
    match &paths.credentials {
        Some(path) => builder = builder.with_file(ProfileFileKind::Credentials, path),
        None => builder = builder.include_default_credentials_file(true),
    }
    builder.build()
}

async fn check_profile(
    profile: &str,
    files: &ProfileFiles,
    target: &Target,
) -> Result<(), SyncError> {
    let set = aws_config::profile::load(
        &Fs::real(),
        &Env::real(),
        files,
        Some(Cow::Owned(profile.to_string())),
    )
    .await
    .map_err(|e| SyncError::ProfileFiles {
        target: Box::new(target.clone()),
        detail: e.to_string(),
    })?;
    if set.get_profile(profile).is_none() {
        return Err(SyncError::UnknownProfile {
            target: Box::new(target.clone()),
            profile: profile.to_string(),
        });
    }
    Ok(())
}

async fn build(
    side: &SideConfig,
    paths: &ProfileFilePaths,
    retry: RetrySettings,
    target: &Target,
) -> Result<Built, SyncError> {
    let files = profile_files(paths);
    if let Some(profile) = &side.profile {
        check_profile(profile, &files, target).await?;
    }
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let retry_config = RetryConfig::standard()
        .with_max_attempts(retry.request_attempts.max(1))
        .with_initial_backoff(retry.initial_backoff)
        .with_max_backoff(retry.max_backoff);
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(retry_config)
        .timeout_config(timeouts)
        .profile_files(files);
    if let Some(profile) = &side.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &side.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &side.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let sdk = loader.load().await;
    let mut config = aws_sdk_s3::config::Builder::from(&sdk)
        // Integrity on the wire is TLS's job; checksumming every body again
        // costs CPU and aws-chunked uploads that some S3-compatible servers
        // reject.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .force_path_style(side.endpoint.is_some());
    if sdk.region().is_none() {
        config = config.region(Region::new(FALLBACK_REGION));
    }
    tracing::debug!(
        copy = %target.copy,
        side = %target.side,
        profile = %target.profile,
        endpoint = ?side.endpoint,
        "built s3 client"
    );
    Ok(Built {
        client: Client::from_conf(config.build()),
        credentials: sdk.credentials_provider(),
    })
}
