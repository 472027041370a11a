//! What the agent logs in to its server with: nothing (peer or trust on
//! the socket), a password read from a file only the agent can read or
//! from an environment variable, or an RDS IAM token the agent signs with
//! its AWS credentials and renews before it expires.
//!
//! A secret is read when a session or a tool needs it, so a rotated file
//! takes effect at the next job; it reaches `pg_dump`/`pg_restore` only
//! through their environment, and never appears in a message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_smithy_runtime_api::client::identity::Identity;

/// How long an RDS IAM token is valid; a new one is made well before.
const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
const TOKEN_RENEW_AFTER: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub enum Secret {
    /// The server lets the agent's role in without one.
    None,
    /// The first line of this file.
    File(PathBuf),
    /// The value of this environment variable.
    Env(String),
    /// An RDS IAM token for the server's host and port.
    RdsIam(Arc<RdsIam>),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Why no secret could be had; says which and what to do, never the value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(pub String);

impl Secret {
    pub fn rds_iam(host: &str, port: u16, region: Option<String>) -> Self {
        Secret::RdsIam(Arc::new(RdsIam {
            host: host.to_string(),
            port,
            region,
            token: Mutex::new(None),
        }))
    }

    /// Where the secret comes from, for messages and `info`.
    pub fn describe(&self) -> String {
        match self {
            Secret::None => "none (peer or trust authentication)".into(),
            Secret::File(p) => format!("password file {}", p.display()),
            Secret::Env(name) => format!("environment variable {name}"),
            Secret::RdsIam(_) => "RDS IAM token".into(),
        }
    }

    /// The password for role `user` now, if the server needs one.
    pub async fn password(&self, user: &str) -> Result<Option<String>, SecretError> {
        match self {
            Secret::None => Ok(None),
            Secret::File(path) => read_file(path).map(Some),
            Secret::Env(name) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(Some(v)),
                _ => Err(SecretError(format!(
                    "the environment variable {name} (postgres.password_env) is not set or empty"
                ))),
            },
            Secret::RdsIam(iam) => iam.token(user).await.map(Some),
        }
    }
}

/// The file's first line, if only its owner may read it.
fn read_file(path: &Path) -> Result<String, SecretError> {
    check_file(path).map_err(SecretError)?;
    let text = std::fs::read_to_string(path).map_err(|e| {
        SecretError(format!(
            "cannot read the password file {}: {e}",
            path.display()
        ))
    })?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(SecretError(format!(
            "the password file {} is empty",
            path.display()
        )));
    }
    Ok(line)
}

/// A password file must be a regular file the agent can read and nobody
/// else: not its group, not others.
pub fn check_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "the password file {} may be read by others (mode {:o}): chmod 600 it, owned by the agent's user",
            path.display(),
            mode & 0o777
        ));
    }
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))
}

/// An RDS IAM token source: the agent's AWS credentials (the default
/// chain: environment, profile files, instance or task role) sign a
/// `connect` request for the host, port and role.
pub struct RdsIam {
    host: String,
    port: u16,
    region: Option<String>,
    /// The last token, its role and when it was made.
    token: Mutex<Option<(String, String, SystemTime)>>,
}

impl RdsIam {
    async fn token(&self, user: &str) -> Result<String, SecretError> {
        if let Ok(held) = self.token.lock()
            && let Some((role, token, made)) = held.as_ref()
            && role == user
            && made.elapsed().is_ok_and(|age| age < TOKEN_RENEW_AFTER)
        {
            return Ok(token.clone());
        }
        let (credentials, region) = self.credentials().await?;
        let now = SystemTime::now();
        let token = auth_token(&self.host, self.port, &region, user, credentials, now)?;
        if let Ok(mut held) = self.token.lock() {
            *held = Some((user.to_string(), token.clone(), now));
        }
        Ok(token)
    }

    async fn credentials(&self) -> Result<(Credentials, String), SecretError> {
        use aws_credential_types::provider::ProvideCredentials;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &self.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        let conf = loader.load().await;
        let region = conf.region().map(|r| r.to_string()).ok_or_else(|| {
            SecretError(
                "no AWS region for the RDS IAM token: set postgres.aws_region or AWS_REGION".into(),
            )
        })?;
        let provider = conf
            .credentials_provider()
            .ok_or_else(|| SecretError("no AWS credentials for the RDS IAM token".into()))?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| SecretError(format!("no AWS credentials for the RDS IAM token: {e}")))?;
        Ok((credentials, region))
    }
}

/// The RDS IAM token for `user` at `host:port`: a `connect` request
/// presigned (SigV4, service `rds-db`, 15 minutes) at `time`, without its
/// scheme.
pub fn auth_token(
    host: &str,
    port: u16,
    region: &str,
    user: &str,
    credentials: Credentials,
    time: SystemTime,
) -> Result<String, SecretError> {
    let fail = |e: &dyn fmt::Display| SecretError(format!("signing the RDS IAM token: {e}"));
    let user_q = percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC);
    let url = format!("https://{host}:{port}/?Action=connect&DBUser={user_q}");
    let identity: Identity = credentials.into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| fail(&e))?
        .into();
    let host_header = format!("{host}:{port}");
    let signable = SignableRequest::new(
        "GET",
        &url,
        [("host", host_header.as_str())].into_iter(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| fail(&e))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| fail(&e))?.into_parts();
    let mut token = format!("{host}:{port}/?Action=connect&DBUser={user_q}");
    for (name, value) in instructions.params() {
        let v = percent_encoding::utf8_percent_encode(value, QUERY_VALUE);
        token.push_str(&format!("&{name}={v}"));
    }
    Ok(token)
}

/// What SigV4 leaves unescaped in a query value.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    /// A published SigV4 presigning vector for an RDS `connect` request
    /// (key `carbon`, the AWS documentation's example secret, 2016-01-01
    /// 00:00:00 UTC, us-east-1, 15 minutes). The signer is the SDK's; this
    /// checks what we give it and how the token is put together. The
    /// server's side of IAM authentication cannot be tested here.
    #[test]
    fn an_rds_iam_token_matches_a_known_vector() {
        let credentials = Credentials::new(
            "carbon",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_451_606_400);
        let token =
            auth_token("carbon.db", 3010, "us-east-1", "carbon", credentials, time).expect("token");
        let (base, query) = token.split_once('?').expect("a query");
        assert_eq!(base, "carbon.db:3010/");
        let mut params: Vec<&str> = query.split('&').collect();
        params.sort();
        assert_eq!(
            params,
            [
                "Action=connect",
                "DBUser=carbon",
                "X-Amz-Algorithm=AWS4-HMAC-SHA256",
                "X-Amz-Credential=carbon%2F20160101%2Fus-east-1%2Frds-db%2Faws4_request",
                "X-Amz-Date=20160101T000000Z",
                "X-Amz-Expires=900",
                "X-Amz-Signature=7c7f54b5f2ae7de227c96b59680f1a443562785addb8c62c0f674b052c3ebfae",
                "X-Amz-SignedHeaders=host",
            ]
        );
    }

    #[test]
    fn a_password_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\nignored\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = check_file(&path).unwrap_err();
        assert!(e.contains("chmod 600") && !e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_file(&path).expect("read"), "s3cret");
        assert!(!format!("{:?}", Secret::File(path)).contains("s3cret"));
    }
}
