//! The fleet plan (`stagesync.toml`): the controller's identity, the agents,
//! and the pairs to refresh, chained with `after`.
//!
//! Parsing is strict: unknown keys, wrong types, unknown agents, cycles in
//! `after`, two pairs writing one destination and a pair writing into its
//! own source are all errors naming the file, the line and the key. Secrets
//! never appear in a plan: the post-restore SQL names environment variables
//! as `${NAME}`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use stagesync_certs::{Identity, Kind, TlsFiles};
use stagesync_proto::tomlfile::{ConfigError, TomlFile};
use stagesync_proto::v1 as pb;
use toml::Spanned;

use crate::client::AgentTarget;
use crate::refresh::PairSpec;

/// Where `--plan` points when not given.
pub const DEFAULT_PLAN: &str = "stagesync.toml";

type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    controller: RawController,
    agents: S<BTreeMap<String, S<RawAgent>>>,
    #[serde(default)]
    defaults: RawOptions,
    #[serde(default)]
    pairs: BTreeMap<String, S<RawPair>>,
    backups: Option<S<RawBackups>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackups {
    daily: S<String>,
    weekly: Option<S<String>>,
    weekly_days: Option<S<Vec<u32>>>,
    keep_daily: Option<S<u32>>,
    keep_weekly: Option<S<u32>>,
    profile: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    name: S<String>,
    certs_dir: Option<S<String>>,
    ca: Option<S<String>>,
    cert: Option<S<String>>,
    key: Option<S<String>>,
    state_dir: Option<S<String>>,
    parallel: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    endpoint: S<String>,
    /// The address other agents dial, when not `endpoint`.
    peer_endpoint: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    mode: Option<S<String>>,
    jobs: Option<S<u32>>,
    lanes: Option<S<u32>>,
    compress: Option<bool>,
    privileges: Option<bool>,
    exclude_tables: Option<Vec<String>>,
    exclude_table_data: Option<Vec<String>>,
    schemas: Option<Vec<String>>,
    exclude_schemas: Option<Vec<String>>,
    pg_dump_args: Option<Vec<String>>,
    pg_restore_args: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnd {
    agent: Option<S<String>>,
    database: S<String>,
    owner: Option<S<String>>,
    /// A source only: `s3://bucket/prefix/` holding backups of `database`.
    backup: Option<S<String>>,
    /// With `backup`: one backup by its time stamp (default: the newest).
    taken: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    source: S<RawEnd>,
    dest: S<RawEnd>,
    // The same keys as [defaults] (serde's flatten would lose the spans).
    mode: Option<S<String>>,
    jobs: Option<S<u32>>,
    lanes: Option<S<u32>>,
    compress: Option<bool>,
    privileges: Option<bool>,
    exclude_tables: Option<Vec<String>>,
    exclude_table_data: Option<Vec<String>>,
    schemas: Option<Vec<String>>,
    exclude_schemas: Option<Vec<String>>,
    pg_dump_args: Option<Vec<String>>,
    pg_restore_args: Option<Vec<String>>,
    post_restore_sql: Option<S<String>>,
    #[serde(default)]
    post_restore_sql_files: Vec<S<String>>,
    #[serde(default)]
    params: Vec<S<String>>,
    #[serde(default)]
    after: Vec<S<String>>,
    #[serde(default)]
    copies: Vec<S<RawCopy>>,
    #[serde(default)]
    preflight: RawPreflight,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCopy {
    name: S<String>,
    source: S<String>,
    dest: S<String>,
    /// One profile for both sides, as the role does.
    profile: Option<S<String>>,
    source_profile: Option<S<String>>,
    dest_profile: Option<S<String>>,
    region: Option<String>,
    source_region: Option<String>,
    dest_region: Option<String>,
    endpoint: Option<String>,
    source_endpoint: Option<String>,
    dest_endpoint: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    delete: Option<bool>,
    max_delete: Option<u64>,
    max_delete_percent: Option<S<f64>>,
    concurrency: Option<S<usize>>,
    multipart_threshold: Option<u64>,
    listing: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreflight {
    git: Option<S<RawGit>>,
    #[serde(default)]
    commands: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGit {
    repo: S<String>,
    source_ref: S<String>,
    dest_ref: S<String>,
}

/// A validated plan.
#[derive(Clone, Debug)]
pub struct Plan {
    pub source: PathBuf,
    pub controller: String,
    pub tls: TlsFiles,
    pub state_dir: Option<PathBuf>,
    pub parallel: u32,
    pub agents: BTreeMap<String, PlanAgent>,
    pub pairs: BTreeMap<String, PlanPair>,
    pub backups: Option<BackupPlan>,
}

/// Where and how long backups are kept (`[backups]`). The profile, region
/// and endpoint are used by the agents on their hosts, and by
/// `stagesync backups` here.
#[derive(Clone, Debug)]
pub struct BackupPlan {
    pub daily: stagesync_s3::S3Location,
    pub weekly: Option<stagesync_s3::S3Location>,
    pub weekly_days: Vec<u32>,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub side: stagesync_s3::SideConfig,
}

/// The role's weekly days.
pub const DEFAULT_WEEKLY_DAYS: &[u32] = &[1, 7, 14, 21, 28];

#[derive(Clone, Debug)]
pub struct PlanAgent {
    pub name: String,
    pub endpoint: String,
    pub peer_endpoint: Option<String>,
}

#[derive(Clone, Debug)]
pub struct PlanPair {
    pub name: String,
    /// Empty when the source is a backup.
    pub source_agent: String,
    pub source_db: String,
    /// The source is a backup in S3, not a live database.
    pub source_backup: Option<SourceBackup>,
    pub dest_agent: String,
    pub dest_db: String,
    pub owner: String,
    pub mode: pb::Mode,
    pub jobs: u32,
    /// Stream mode: at most this many concurrent data lanes (None: `jobs`).
    pub lanes: Option<u32>,
    pub compress: crate::refresh::Compress,
    pub dump: pb::DumpOptions,
    pub restore: pb::RestoreOptions,
    pub post_restore_sql: String,
    /// Environment variables the post-restore SQL uses.
    pub params: Vec<String>,
    pub after: Vec<String>,
    /// S3 copies that run alongside the database refresh.
    pub copies: Vec<stagesync_s3::CopySpec>,
    pub preflight: Preflight,
}

/// A pair's source in S3: `source = { backup = "s3://...", database = ... }`.
#[derive(Clone, Debug)]
pub struct SourceBackup {
    pub place: stagesync_s3::S3Location,
    pub taken: Option<String>,
}

/// Checks run before a pair changes anything.
#[derive(Clone, Debug, Default)]
pub struct Preflight {
    /// Refuse unless both refs of this repository point at one commit (the
    /// code, and so the migrations, must match before the data is copied).
    pub git: Option<GitCheck>,
    /// Shell commands that must exit 0.
    pub commands: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct GitCheck {
    pub repo: String,
    pub source_ref: String,
    pub dest_ref: String,
}

/// Reads and validates a plan file.
pub fn load(path: &Path) -> Result<Plan, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        key: String::new(),
        message: format!("cannot read the plan: {e}; pass --plan FILE"),
    })?;
    parse(path, &text)
}

/// Validates plan text read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Plan, ConfigError> {
    let f = TomlFile { path, text };
    let raw: RawPlan =
        toml::from_str(text).map_err(|e| f.toml_error(&e, "see the example stagesync.toml"))?;
    validate(&f, raw)
}

fn valid_name(n: &str) -> bool {
    stagesync_certs::identity::validate_name(n).is_ok()
}

fn valid_env(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !n.as_bytes()[0].is_ascii_digit()
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

fn validate(f: &TomlFile<'_>, raw: RawPlan) -> Result<Plan, ConfigError> {
    let c = &raw.controller;
    if !valid_name(c.name.get_ref()) {
        return f.err(
            c.name.span(),
            "controller.name",
            format!(
                "invalid name {:?}: use a-z, 0-9, '-', '_', '.'",
                c.name.get_ref()
            ),
        );
    }
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
    let tls = TlsFiles {
        ca: pick(
            &c.ca,
            "controller.ca",
            certs_dir.as_ref().map(|d| d.join("ca.crt")),
        )?,
        cert: pick(&c.cert, "controller.cert", dc)?,
        key: pick(&c.key, "controller.key", dk)?,
    };
    let parallel = match &c.parallel {
        Some(p) if *p.get_ref() == 0 || *p.get_ref() > 64 => {
            return f.err(p.span(), "controller.parallel", "must be 1 to 64");
        }
        Some(p) => *p.get_ref(),
        None => 2,
    };

    let mut agents = BTreeMap::new();
    for (name, a) in raw.agents.get_ref() {
        let key = format!("agents.{name}");
        if !valid_name(name) {
            return f.err(
                a.span(),
                &key,
                format!("invalid agent name {name:?}: use a-z, 0-9, '-', '_', '.'"),
            );
        }
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
        agents.insert(
            name.clone(),
            PlanAgent {
                name: name.clone(),
                endpoint: a.endpoint.get_ref().clone(),
                peer_endpoint: a.peer_endpoint.as_ref().map(|p| p.get_ref().clone()),
            },
        );
    }
    if agents.is_empty() {
        return f.err(
            raw.agents.span(),
            "agents",
            "no agents: list at least a source and a destination",
        );
    }

    let mut pairs = BTreeMap::new();
    let mut writers: HashMap<(String, String), String> = HashMap::new();
    for (name, p) in &raw.pairs {
        let key = format!("pairs.{name}");
        if !valid_name(name) {
            return f.err(
                p.span(),
                &key,
                format!("invalid pair name {name:?}: use a-z, 0-9, '-', '_', '.'"),
            );
        }
        let pair = validate_pair(f, &key, name, p.get_ref(), &raw.defaults, &agents)?;
        let dest = (pair.dest_agent.clone(), pair.dest_db.clone());
        if let Some(other) = writers.insert(dest.clone(), name.clone()) {
            return f.err(
                p.get_ref().dest.span(),
                &format!("{key}.dest"),
                format!("pairs {other:?} and {name:?} both write {:?} on agent {:?}: one destination, one pair", dest.1, dest.0),
            );
        }
        pairs.insert(name.clone(), (pair, p.span()));
    }
    for (name, (pair, _)) in &pairs {
        for (i, dep) in pair.after.iter().enumerate() {
            if !pairs.contains_key(dep) {
                let span = raw.pairs[name].get_ref().after[i].span();
                return f.err(
                    span,
                    &format!("pairs.{name}.after"),
                    format!("no pair named {dep:?}"),
                );
            }
        }
    }
    let pairs: BTreeMap<String, PlanPair> = pairs.into_iter().map(|(k, (p, _))| (k, p)).collect();
    if let Some(cycle) = find_cycle(&pairs) {
        let first = &cycle[0];
        let span = raw.pairs[first]
            .get_ref()
            .after
            .first()
            .map(|a| a.span())
            .unwrap_or(0..0);
        return f.err(
            span,
            &format!("pairs.{first}.after"),
            format!("`after` makes a cycle: {}", cycle.join(" -> ")),
        );
    }
    let backups = match &raw.backups {
        Some(b) => Some(validate_backups(f, b.get_ref())?),
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
    })
}

fn validate_backups(f: &TomlFile<'_>, b: &RawBackups) -> Result<BackupPlan, ConfigError> {
    let place = |url: &S<String>, key: &str| {
        stagesync_s3::S3Location::parse(url.get_ref()).map_err(|e| f.error(url.span(), key, e))
    };
    let daily = place(&b.daily, "backups.daily")?;
    let weekly = match &b.weekly {
        Some(w) => {
            let loc = place(w, "backups.weekly")?;
            let nested = loc.bucket == daily.bucket
                && (loc.prefix.starts_with(&daily.prefix) || daily.prefix.starts_with(&loc.prefix));
            if nested {
                return f.err(
                    w.span(),
                    "backups.weekly",
                    "must not be backups.daily or lie inside it (or it inside this): retention of one would prune the other",
                );
            }
            Some(loc)
        }
        None => None,
    };
    let weekly_days = match &b.weekly_days {
        Some(days) => {
            if let Some(d) = days.get_ref().iter().find(|d| !(1..=31).contains(*d)) {
                return f.err(
                    days.span(),
                    "backups.weekly_days",
                    format!("{d} is not a day of the month (1 to 31)"),
                );
            }
            days.get_ref().clone()
        }
        None => DEFAULT_WEEKLY_DAYS.to_vec(),
    };
    let keep = |v: &Option<S<u32>>, key: &str, default: u32| match v {
        Some(k) if *k.get_ref() == 0 => f.err(
            k.span(),
            key,
            "must be at least 1: the newest good backup is always kept",
        ),
        Some(k) => Ok(*k.get_ref()),
        None => Ok(default),
    };
    Ok(BackupPlan {
        daily,
        weekly,
        weekly_days,
        keep_daily: keep(&b.keep_daily, "backups.keep_daily", 7)?,
        keep_weekly: keep(&b.keep_weekly, "backups.keep_weekly", 8)?,
        side: stagesync_s3::SideConfig {
            profile: b.profile.clone(),
            region: b.region.clone(),
            endpoint: b.endpoint.clone(),
        },
    })
}

fn validate_pair(
    f: &TomlFile<'_>,
    key: &str,
    name: &str,
    p: &RawPair,
    defaults: &RawOptions,
    agents: &BTreeMap<String, PlanAgent>,
) -> Result<PlanPair, ConfigError> {
    let mut source_backup = None;
    for (end, which) in [(&p.source, "source"), (&p.dest, "dest")] {
        let e = end.get_ref();
        match (&e.agent, &e.backup, which) {
            (Some(_), Some(b), _) => {
                return f.err(
                    b.span(),
                    &format!("{key}.{which}.backup"),
                    "give either an agent or a backup, not both",
                );
            }
            (None, Some(b), "dest") => {
                return f.err(
                    b.span(),
                    &format!("{key}.dest.backup"),
                    "a destination is a database on an agent, not a backup",
                );
            }
            (None, None, _) => {
                return f.err(
                    end.span(),
                    &format!("{key}.{which}.agent"),
                    if which == "source" {
                        "missing: name the agent (or, for a source, a `backup` place)"
                    } else {
                        "missing: name the agent"
                    },
                );
            }
            (None, Some(b), _) => {
                let place = stagesync_s3::S3Location::parse(b.get_ref())
                    .map_err(|m| f.error(b.span(), &format!("{key}.source.backup"), m))?;
                source_backup = Some(SourceBackup {
                    place,
                    taken: e.taken.as_ref().map(|t| t.get_ref().clone()),
                });
            }
            (Some(a), None, _) => {
                if !agents.contains_key(a.get_ref()) {
                    return f.err(
                        a.span(),
                        &format!("{key}.{which}.agent"),
                        format!(
                            "no agent named {:?} in [agents] (known: {})",
                            a.get_ref(),
                            agents.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
        }
        if let (Some(t), None) = (&e.taken, &e.backup) {
            return f.err(
                t.span(),
                &format!("{key}.{which}.taken"),
                "`taken` picks one backup: it goes with `backup`",
            );
        }
        let db = &end.get_ref().database;
        if db.get_ref().is_empty() {
            return f.err(
                db.span(),
                &format!("{key}.{which}.database"),
                "must not be empty",
            );
        }
    }
    let (src, dst) = (p.source.get_ref(), p.dest.get_ref());
    if src.owner.is_some() {
        let o = src.owner.as_ref().map(|o| o.span()).unwrap_or(0..0);
        return f.err(
            o,
            &format!("{key}.source.owner"),
            "the owner belongs to the destination (dest.owner)",
        );
    }
    let Some(owner) = &dst.owner else {
        return f.err(
            p.dest.span(),
            &format!("{key}.dest.owner"),
            "missing: the role that will own everything restored",
        );
    };
    let agent_name = |e: &RawEnd| e.agent.as_ref().map(|a| a.get_ref().clone());
    if agent_name(src).is_some()
        && agent_name(src) == agent_name(dst)
        && src.database.get_ref() == dst.database.get_ref()
    {
        return f.err(
            p.dest.span(),
            &format!("{key}.dest"),
            "the pair writes into its own source",
        );
    }
    let o = RawOptions {
        mode: p.mode.clone(),
        jobs: p.jobs.clone(),
        lanes: p.lanes.clone(),
        compress: p.compress,
        privileges: p.privileges,
        exclude_tables: p.exclude_tables.clone(),
        exclude_table_data: p.exclude_table_data.clone(),
        schemas: p.schemas.clone(),
        exclude_schemas: p.exclude_schemas.clone(),
        pg_dump_args: p.pg_dump_args.clone(),
        pg_restore_args: p.pg_restore_args.clone(),
    };
    let d = defaults.clone();
    let mode_s = o.mode.clone().or(d.mode.clone());
    let mode = match mode_s.as_ref().map(|m| m.get_ref().as_str()) {
        None | Some("stream") => pb::Mode::Stream,
        Some("parallel") => pb::Mode::Parallel,
        Some(other) => {
            let span = mode_s.as_ref().map(|m| m.span()).unwrap_or(0..0);
            return f.err(
                span,
                &format!("{key}.mode"),
                format!("unknown mode {other:?}: use \"stream\" or \"parallel\""),
            );
        }
    };
    if source_backup.is_some() && mode == pb::Mode::Parallel {
        let span = mode_s.as_ref().map(|m| m.span()).unwrap_or(0..0);
        return f.err(
            span,
            &format!("{key}.mode"),
            "a backup is restored in stream mode",
        );
    }
    let jobs_s = o.jobs.clone().or(d.jobs.clone());
    let jobs = match &jobs_s {
        Some(j) if !(1..=64).contains(j.get_ref()) => {
            return f.err(j.span(), &format!("{key}.jobs"), "must be 1 to 64");
        }
        Some(j) => *j.get_ref(),
        None => 2,
    };
    let lanes = match o.lanes.clone().or(d.lanes.clone()) {
        Some(l) if !(1..=stagesync_proto::MAX_DATA_LANES).contains(l.get_ref()) => {
            return f.err(
                l.span(),
                &format!("{key}.lanes"),
                format!("must be 1 to {}", stagesync_proto::MAX_DATA_LANES),
            );
        }
        l => l.map(|l| *l.get_ref()),
    };
    let mut sql = p
        .post_restore_sql
        .as_ref()
        .map(|s| s.get_ref().clone())
        .unwrap_or_default();
    for file in &p.post_restore_sql_files {
        let path = f.resolve(file.get_ref());
        let text = std::fs::read_to_string(&path).map_err(|e| {
            f.error(
                file.span(),
                &format!("{key}.post_restore_sql_files"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        if !sql.is_empty() {
            sql.push_str(";\n");
        }
        sql.push_str(&text);
    }
    let mut params = Vec::new();
    for v in &p.params {
        if !valid_env(v.get_ref()) {
            return f.err(
                v.span(),
                &format!("{key}.params"),
                format!(
                    "{:?} is not an environment variable name (A-Z, 0-9, _)",
                    v.get_ref()
                ),
            );
        }
        params.push(v.get_ref().clone());
    }
    let used = referenced_params(&sql);
    if let Some(missing) = used.iter().find(|u| !params.contains(u)) {
        let span = p
            .post_restore_sql
            .as_ref()
            .map(|s| s.span())
            .unwrap_or(0..0);
        return f.err(
            span,
            &format!("{key}.post_restore_sql"),
            format!("uses ${{{missing}}}, which is not listed in params: add \"{missing}\" to params and set it in the environment"),
        );
    }
    let mut after = Vec::new();
    for a in &p.after {
        if a.get_ref() == name {
            return f.err(
                a.span(),
                &format!("{key}.after"),
                "a pair cannot come after itself",
            );
        }
        after.push(a.get_ref().clone());
    }
    let list = |x: Option<Vec<String>>, y: Option<Vec<String>>| x.or(y).unwrap_or_default();
    Ok(PlanPair {
        name: name.to_string(),
        source_agent: agent_name(src).unwrap_or_default(),
        source_db: src.database.get_ref().clone(),
        source_backup,
        dest_agent: agent_name(dst).unwrap_or_default(),
        dest_db: dst.database.get_ref().clone(),
        owner: owner.get_ref().clone(),
        mode,
        jobs,
        lanes,
        compress: match o.compress.or(d.compress) {
            None => crate::refresh::Compress::Auto,
            Some(true) => crate::refresh::Compress::Always,
            Some(false) => crate::refresh::Compress::Never,
        },
        dump: pb::DumpOptions {
            exclude_tables: list(o.exclude_tables, d.exclude_tables),
            exclude_table_data: list(o.exclude_table_data, d.exclude_table_data),
            schemas: list(o.schemas, d.schemas),
            exclude_schemas: list(o.exclude_schemas, d.exclude_schemas),
            extra_args: list(o.pg_dump_args, d.pg_dump_args),
        },
        restore: pb::RestoreOptions {
            privileges: o.privileges.or(d.privileges).unwrap_or(false),
            extra_args: list(o.pg_restore_args, d.pg_restore_args),
        },
        post_restore_sql: sql,
        params,
        after,
        copies: p
            .copies
            .iter()
            .enumerate()
            .map(|(i, c)| validate_copy(f, &format!("{key}.copies[{i}]"), c, &p.copies))
            .collect::<Result<_, _>>()?,
        preflight: Preflight {
            git: match &p.preflight.git {
                Some(g) => {
                    let g = g.get_ref();
                    for (v, k) in [
                        (&g.repo, "repo"),
                        (&g.source_ref, "source_ref"),
                        (&g.dest_ref, "dest_ref"),
                    ] {
                        if v.get_ref().is_empty() || v.get_ref().starts_with('-') {
                            return f.err(
                                v.span(),
                                &format!("{key}.preflight.git.{k}"),
                                "must be a repository or ref, not empty and not starting with '-'",
                            );
                        }
                    }
                    Some(GitCheck {
                        repo: g.repo.get_ref().clone(),
                        source_ref: g.source_ref.get_ref().clone(),
                        dest_ref: g.dest_ref.get_ref().clone(),
                    })
                }
                None => None,
            },
            commands: p
                .preflight
                .commands
                .iter()
                .map(|c| c.get_ref().clone())
                .collect(),
        },
    })
}

fn validate_copy(
    f: &TomlFile<'_>,
    key: &str,
    c: &S<RawCopy>,
    all: &[S<RawCopy>],
) -> Result<stagesync_s3::CopySpec, ConfigError> {
    use stagesync_s3::{CopySpec, S3Location, SideConfig};
    let r = c.get_ref();
    let name = r.name.get_ref();
    if name.is_empty()
        || all
            .iter()
            .filter(|o| o.get_ref().name.get_ref() == name)
            .count()
            > 1
    {
        return f.err(
            r.name.span(),
            &format!("{key}.name"),
            format!("copy names must be unique and not empty ({name:?})"),
        );
    }
    let source = S3Location::parse(r.source.get_ref())
        .map_err(|e| f.error(r.source.span(), &format!("{key}.source"), e))?;
    let dest = S3Location::parse(r.dest.get_ref())
        .map_err(|e| f.error(r.dest.span(), &format!("{key}.dest"), e))?;
    if source == dest {
        return f.err(
            r.dest.span(),
            &format!("{key}.dest"),
            "the copy writes into its own source",
        );
    }
    if let Some(p) = &r.profile
        && (r.source_profile.is_some() || r.dest_profile.is_some())
    {
        return f.err(
            p.span(),
            &format!("{key}.profile"),
            "use either profile (both sides) or source_profile/dest_profile",
        );
    }
    let side = |profile: &Option<S<String>>, region: &Option<String>, endpoint: &Option<String>| {
        SideConfig {
            profile: profile
                .as_ref()
                .or(r.profile.as_ref())
                .map(|p| p.get_ref().clone()),
            region: region.clone().or(r.region.clone()),
            endpoint: endpoint.clone().or(r.endpoint.clone()),
        }
    };
    let mut spec = CopySpec::new(name.clone(), source, dest);
    spec.source_side = side(&r.source_profile, &r.source_region, &r.source_endpoint);
    spec.dest_side = side(&r.dest_profile, &r.dest_region, &r.dest_endpoint);
    spec.include = r.include.clone();
    spec.exclude = r.exclude.clone();
    spec.delete = r.delete.unwrap_or(true);
    if let Some(n) = r.max_delete {
        spec.delete_limit.max_count = Some(n);
    }
    if let Some(pct) = &r.max_delete_percent {
        if !(0.0..=100.0).contains(pct.get_ref()) {
            return f.err(
                pct.span(),
                &format!("{key}.max_delete_percent"),
                "must be 0 to 100",
            );
        }
        spec.delete_limit.max_percent = Some(*pct.get_ref());
    }
    if let Some(n) = &r.concurrency {
        if *n.get_ref() == 0 || *n.get_ref() > 1024 {
            return f.err(n.span(), &format!("{key}.concurrency"), "must be 1 to 1024");
        }
        spec.concurrency = *n.get_ref();
    }
    if let Some(t) = r.multipart_threshold {
        spec.multipart_threshold = t;
    }
    if let Some(l) = &r.listing {
        spec.listing = match l.get_ref().parse() {
            Ok(mode) => mode,
            Err(e) => return f.err(l.span(), &format!("{key}.listing"), &e),
        };
    }
    for (globs, k) in [(&spec.include, "include"), (&spec.exclude, "exclude")] {
        for g in globs {
            if let Err(e) = globset::Glob::new(g) {
                return f.err(
                    c.span(),
                    &format!("{key}.{k}"),
                    format!("bad glob {g:?}: {}", e.kind()),
                );
            }
        }
    }
    Ok(spec)
}

/// `${NAME}` references in SQL (`$${` is an escaped literal).
pub fn referenced_params(sql: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = sql;
    while let Some(pos) = rest.find("${") {
        let escaped = pos > 0 && rest.as_bytes()[pos - 1] == b'$';
        let after = &rest[pos + 2..];
        if !escaped && let Some(end) = after.find('}') {
            out.insert(after[..end].to_string());
        }
        rest = after;
    }
    out
}

/// A cycle in `after`, as pair names, if there is one.
fn find_cycle(pairs: &BTreeMap<String, PlanPair>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        pairs: &BTreeMap<String, PlanPair>,
        state: &mut HashMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for dep in pairs.get(n).map(|p| p.after.as_slice()).unwrap_or(&[]) {
            if let Some(c) = visit(dep, pairs, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = HashMap::new();
    for name in pairs.keys() {
        if let Some(c) = visit(name, pairs, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

impl Plan {
    /// The identity plan agent `name` must present.
    pub fn agent_target(&self, name: &str, trust_domain: &str) -> Option<AgentTarget> {
        let a = self.agents.get(name)?;
        Some(AgentTarget {
            address: a.endpoint.clone(),
            expected: Identity::new(trust_domain, Kind::Agent, name).ok(),
        })
    }

    /// The refresh of pair `name`, with parameters read from `env`.
    pub fn pair_spec(
        &self,
        name: &str,
        trust_domain: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PairSpec, String> {
        let p = self
            .pairs
            .get(name)
            .ok_or_else(|| format!("no pair named {name:?} in {}", self.source.display()))?;
        let dest = self
            .agent_target(&p.dest_agent, trust_domain)
            .ok_or("unknown destination agent")?;
        // A backup source has no agent; the destination stands in.
        let source = match &p.source_backup {
            Some(_) => dest.clone(),
            None => self
                .agent_target(&p.source_agent, trust_domain)
                .ok_or("unknown source agent")?,
        };
        let mut spec = PairSpec::new(source, &p.source_db, dest, &p.dest_db, &p.owner);
        spec.dest_peer_address = self.agents[&p.dest_agent].peer_endpoint.clone();
        spec.mode = p.mode;
        spec.jobs = p.jobs;
        spec.lanes = p.lanes;
        spec.compress = p.compress;
        spec.dump = p.dump.clone();
        spec.restore = p.restore.clone();
        spec.post_restore_sql = p.post_restore_sql.clone();
        for param in &p.params {
            let v = env(param).ok_or_else(|| {
                format!("pair {name:?}: environment variable {param} is not set (the post-restore SQL needs it)")
            })?;
            spec.params.insert(param.clone(), v);
        }
        Ok(spec)
    }

    /// The backup source of pair `name`, if its source is a backup: the
    /// place and time from the pair, the credentials side from `[backups]`.
    pub fn backup_source(&self, name: &str) -> Option<crate::refresh::BackupSource> {
        let p = self.pairs.get(name)?;
        let b = p.source_backup.as_ref()?;
        Some(crate::refresh::BackupSource {
            place: b.place.clone(),
            side: self
                .backups
                .as_ref()
                .map(|x| x.side.clone())
                .unwrap_or_default(),
            files: stagesync_s3::ProfileFilePaths::default(),
            database: p.source_db.clone(),
            taken: b.taken.clone(),
        })
    }

    /// Pairs in an order where each comes after those it names in `after`.
    pub fn order(&self) -> Vec<String> {
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut out = Vec::new();
        while out.len() < self.pairs.len() {
            let before = out.len();
            for (n, p) in &self.pairs {
                if !done.contains(n) && p.after.iter().all(|a| done.contains(a)) {
                    out.push(n.clone());
                }
            }
            for n in &out[before..] {
                done.insert(n.clone());
            }
            if out.len() == before {
                break; // unreachable: cycles are refused when parsing
            }
        }
        out
    }
}
