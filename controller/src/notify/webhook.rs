//! A JSON POST to the webhook, with a timeout per attempt and a few
//! retries. Its URL usually carries a secret (Slack's does), so messages
//! name its host only.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::Webhook;

/// Posts `body` to the URL in the hook's variable (read with `env`).
pub async fn send(
    hook: &Webhook,
    body: &Value,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let url = env(&hook.env)
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| format!("{} is not set: no report sent", hook.env))?;
    let uri: http::Uri = url
        .trim()
        .parse()
        .map_err(|_| format!("{} does not hold a URL: no report sent", hook.env))?;
    let host = match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(h)) => h.to_string(),
        _ => {
            return Err(format!(
                "{} is not an http(s) URL: no report sent",
                hook.env
            ));
        }
    };
    let client = client()?;
    let payload = Bytes::from(serde_json::to_vec(body).map_err(|e| e.to_string())?);
    let mut pause = Duration::from_millis(500);
    let mut last = String::new();
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(8));
        }
        let request = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(payload.clone()))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(hook.timeout, client.request(request)).await {
            Ok(Ok(answer)) if answer.status().is_success() => return Ok(()),
            Ok(Ok(answer)) => last = format!("it answered {}", answer.status()),
            Ok(Err(e)) => last = format!("cannot reach it: {e}"),
            Err(_) => last = format!("no answer in {} s", hook.timeout.as_secs()),
        }
        tracing::debug!(host = %host, attempt, why = %last, "webhook attempt failed");
    }
    Err(format!(
        "the webhook at {host} failed {} time(s), last: {last}; the run itself is not affected",
        hook.retries + 1
    ))
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// HTTP and HTTPS, with the system's root certificates.
fn client() -> Result<HttpsClient, String> {
    let tls = stagesync_s3::https::system_tls()
        .ok_or_else(|| "cannot set up TLS for the webhook".to_string())?;
    let connector = stagesync_s3::https::connector(tls, Duration::from_secs(10));
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> Webhook {
        Webhook {
            env: "HOOK".into(),
            when: super::super::When::Always,
            timeout: Duration::from_secs(1),
            retries: 0,
        }
    }

    #[tokio::test]
    async fn a_missing_or_bad_url_is_said_without_quoting_it() {
        let body = serde_json::json!({});
        let e = send(&hook(), &body, |_| None).await.unwrap_err();
        assert_eq!(e, "HOOK is not set: no report sent");
        let e = send(&hook(), &body, |_| Some("ftp://secret@x/y".into()))
            .await
            .unwrap_err();
        assert!(
            e.contains("not an http(s) URL") && !e.contains("secret"),
            "{e}"
        );
    }
}
