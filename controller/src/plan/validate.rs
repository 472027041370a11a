//! Validating a whole plan, in the order its errors are reported: the
//! controller, the agents, each pair, what the pairs say of each other, and
//! `[backups]`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;

use stagesync_certs::{Kind, TlsFiles};
use stagesync_proto::tomlfile::{ConfigError, TomlFile};

use super::raw::{RawAgent, RawController, RawPlan, S};
use super::{Plan, PlanAgent, PlanPair, backups, notify, order, pair};

pub(super) fn validate(f: &TomlFile<'_>, raw: RawPlan) -> Result<Plan, ConfigError> {
    let c = &raw.controller;
    check_name(
        f,
        c.name.span(),
        "controller.name",
        "name",
        c.name.get_ref(),
    )?;
    let tls = tls_files(f, c)?;
    let parallel = parallel(f, c)?;
    let agents = agents(f, &raw.agents)?;
    let pairs = pairs(f, &raw, &agents)?;
    let backups = match &raw.backups {
        Some(b) => Some(backups::validate_backups(f, b.get_ref())?),
        None => None,
    };
    let notify = match &raw.notify {
        Some(n) => Some(notify::validate_notify(f, n)?),
        None => None,
    };
    Ok(Plan {
        source: f.path.to_path_buf(),
        controller: c.name.get_ref().clone(),
        tls,
        state_dir: c.state_dir.as_ref().map(|d| f.resolve(d.get_ref())),
        parallel,
        agents,
        pairs,
        backups,
        notify,
    })
}

/// Names end up in certificate identities, so they follow the identity
/// rules.
fn check_name(
    f: &TomlFile<'_>,
    span: Range<usize>,
    key: &str,
    what: &str,
    name: &str,
) -> Result<(), ConfigError> {
    if stagesync_certs::identity::validate_name(name).is_ok() {
        return Ok(());
    }
    f.err(
        span,
        key,
        format!("invalid {what} {name:?}: use a-z, 0-9, '-', '_', '.'"),
    )
}

/// The controller's CA, certificate and key: each as given, or else where
/// `certs_dir` keeps it.
fn tls_files(f: &TomlFile<'_>, c: &RawController) -> Result<TlsFiles, ConfigError> {
    let certs_dir = c.certs_dir.as_ref().map(|d| f.resolve(d.get_ref()));
    let pick = |explicit: &Option<S<String>>,
                key: &str,
                default: Option<PathBuf>|
     -> Result<PathBuf, ConfigError> {
        match (explicit, default) {
            (Some(p), _) => Ok(f.resolve(p.get_ref())),
            (None, Some(d)) => Ok(d),
            (None, None) => f.err(
                0..0,
                key,
                "set controller.certs_dir, or controller.ca, cert and key",
            ),
        }
    };
    let (dc, dk) = match &certs_dir {
        Some(d) => {
            let (crt, key) =
                stagesync_certs::pki::leaf_paths(d, Kind::Controller, c.name.get_ref());
            (Some(crt), Some(key))
        }
        None => (None, None),
    };
    Ok(TlsFiles {
        ca: pick(
            &c.ca,
            "controller.ca",
            certs_dir.as_ref().map(|d| d.join("ca.crt")),
        )?,
        cert: pick(&c.cert, "controller.cert", dc)?,
        key: pick(&c.key, "controller.key", dk)?,
    })
}

fn parallel(f: &TomlFile<'_>, c: &RawController) -> Result<u32, ConfigError> {
    match &c.parallel {
        Some(p) if *p.get_ref() == 0 || *p.get_ref() > 64 => {
            f.err(p.span(), "controller.parallel", "must be 1 to 64")
        }
        Some(p) => Ok(*p.get_ref()),
        None => Ok(2),
    }
}

fn agents(
    f: &TomlFile<'_>,
    raw: &S<BTreeMap<String, S<RawAgent>>>,
) -> Result<BTreeMap<String, PlanAgent>, ConfigError> {
    let mut agents = BTreeMap::new();
    for (name, a) in raw.get_ref() {
        agents.insert(name.clone(), agent(f, name, a)?);
    }
    if agents.is_empty() {
        return f.err(
            raw.span(),
            "agents",
            "no agents: list at least a source and a destination",
        );
    }
    Ok(agents)
}

fn agent(f: &TomlFile<'_>, name: &str, a: &S<RawAgent>) -> Result<PlanAgent, ConfigError> {
    let key = format!("agents.{name}");
    check_name(f, a.span(), &key, "agent name", name)?;
    let a = a.get_ref();
    for (ep, k) in [
        (Some(&a.endpoint), "endpoint"),
        (a.peer_endpoint.as_ref(), "peer_endpoint"),
    ] {
        if let Some(ep) = ep
            && !valid_endpoint(ep.get_ref())
        {
            return f.err(
                ep.span(),
                &format!("{key}.{k}"),
                format!("{:?} is not HOST:PORT", ep.get_ref()),
            );
        }
    }
    Ok(PlanAgent {
        name: name.to_string(),
        endpoint: a.endpoint.get_ref().clone(),
        peer_endpoint: a.peer_endpoint.as_ref().map(|p| p.get_ref().clone()),
    })
}

fn valid_endpoint(e: &str) -> bool {
    match e.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(['/', ' '])
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

/// Each pair, then the `after` lists, which may name any pair.
fn pairs(
    f: &TomlFile<'_>,
    raw: &RawPlan,
    agents: &BTreeMap<String, PlanAgent>,
) -> Result<BTreeMap<String, PlanPair>, ConfigError> {
    let mut pairs = BTreeMap::new();
    let mut writers: HashMap<(String, String), String> = HashMap::new();
    for (name, p) in &raw.pairs {
        let key = format!("pairs.{name}");
        check_name(f, p.span(), &key, "pair name", name)?;
        let pair = pair::validate_pair(f, &key, name, p.get_ref(), &raw.defaults, agents)?;
        let dest = (pair.dest_agent.clone(), pair.dest_db.clone());
        if let Some(other) = writers.insert(dest.clone(), name.clone()) {
            return f.err(
                p.get_ref().dest.span(),
                &format!("{key}.dest"),
                format!("pairs {other:?} and {name:?} both write {:?} on agent {:?}: one destination, one pair", dest.1, dest.0),
            );
        }
        pairs.insert(name.clone(), pair);
    }
    order::check_after(f, &raw.pairs, &pairs)?;
    Ok(pairs)
}
