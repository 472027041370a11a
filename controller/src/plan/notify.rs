//! The `[notify]` table: a webhook told how each run went (its URL read
//! from an environment variable, so no secret is in the plan), and a
//! Prometheus textfile.

use std::time::Duration;

use stagesync_proto::tomlfile::{ConfigError, TomlFile};

use super::raw::{RawNotify, S};
use super::sql::valid_env;
use crate::notify::{NotifyPlan, Webhook, When};

pub(super) fn validate_notify(
    f: &TomlFile<'_>,
    table: &S<RawNotify>,
) -> Result<NotifyPlan, ConfigError> {
    let n = table.get_ref();
    let when = match &n.on {
        None => When::Always,
        Some(on) => match on.get_ref().as_str() {
            "always" => When::Always,
            "failure" => When::Failure,
            other => {
                return Err(f.error(
                    on.span(),
                    "notify.on",
                    format!("{other:?}: use \"always\" or \"failure\""),
                ));
            }
        },
    };
    let webhook = match &n.webhook_env {
        Some(env) if valid_env(env.get_ref()) => Some(Webhook {
            env: env.get_ref().clone(),
            when,
            timeout: Duration::from_secs(seconds(f, n)?),
            retries: retries(f, n)?,
        }),
        Some(env) => {
            return Err(f.error(
                env.span(),
                "notify.webhook_env",
                format!(
                    "{:?} is not an environment variable name (A-Z, 0-9, _); the URL itself stays out of the plan",
                    env.get_ref()
                ),
            ));
        }
        None => None,
    };
    let textfile = n.textfile.as_ref().map(|t| f.resolve(t.get_ref()));
    if webhook.is_none() && textfile.is_none() {
        return Err(f.error(
            table.span(),
            "notify",
            "names neither webhook_env nor textfile: nothing to report to",
        ));
    }
    Ok(NotifyPlan { webhook, textfile })
}

fn seconds(f: &TomlFile<'_>, n: &RawNotify) -> Result<u64, ConfigError> {
    match &n.timeout_secs {
        None => Ok(10),
        Some(t) if (1..=300).contains(t.get_ref()) => Ok(*t.get_ref()),
        Some(t) => Err(f.error(t.span(), "notify.timeout_secs", "must be 1 to 300")),
    }
}

fn retries(f: &TomlFile<'_>, n: &RawNotify) -> Result<u32, ConfigError> {
    match &n.retries {
        None => Ok(3),
        Some(r) if *r.get_ref() <= 10 => Ok(*r.get_ref()),
        Some(r) => Err(f.error(r.span(), "notify.retries", "must be 0 to 10")),
    }
}
