//! The raw tables checked one part at a time into an [`AgentConfig`]: the
//! identity and its certificate, the directories, PostgreSQL, the policy,
//! the job limits and the AWS files.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use globset::Glob;
use stagesync_certs::{Identity, Kind, ReloadingServerConfig, TlsError, TlsFiles};
use stagesync_proto::tomlfile::TomlFile;
use toml::Spanned;

use super::PlacePatterns;
use super::raw::{RawConfig, RawJobs, RawMasking, RawPolicy, RawS3, RawTls};
use super::{AgentConfig, ConfigError, Faults, JobLimits, Patterns, Policy};

/// The file being validated, for locating errors.
pub(super) struct Ctx<'a>(pub TomlFile<'a>);

impl<'a> std::ops::Deref for Ctx<'a> {
    type Target = TomlFile<'a>;
    fn deref(&self) -> &TomlFile<'a> {
        &self.0
    }
}

impl Ctx<'_> {
    /// Checks the parts in a fixed order, so a file with several mistakes
    /// always reports the same one first.
    pub(super) fn validate(&self, raw: RawConfig) -> Result<AgentConfig, ConfigError> {
        let (identity, trust_domain) = self.validate_identity(&raw.name, &raw.trust_domain)?;
        let listen = self.validate_listen(&raw.listen)?;
        let tls = self.validate_tls(&raw.tls, &raw.name, &identity)?;
        let work_dir = self.resolve(raw.work_dir.get_ref());
        if let Err(m) = check_writable_dir(&work_dir) {
            return self.err(raw.work_dir.span(), "work_dir", m);
        }
        let postgres = self.validate_postgres(&raw.postgres)?;
        let policy = self.validate_policy(&raw.policy, &trust_domain)?;
        let jobs = self.validate_jobs(&raw.jobs, raw.masking.is_some())?;
        let s3_files = self.validate_s3(&raw.s3)?;
        let masking = self.validate_masking(raw.masking.as_ref(), &trust_domain)?;
        Ok(AgentConfig {
            source: self.path.to_path_buf(),
            name: raw.name.into_inner(),
            identity,
            listen,
            tls,
            work_dir,
            postgres,
            policy,
            jobs,
            s3_files,
            masking,
            faults: Faults::default(),
        })
    }

    /// The agent's identity from `name` and `trust_domain`, and the trust
    /// domain its controllers and peers belong to.
    fn validate_identity(
        &self,
        name: &Spanned<String>,
        trust_domain: &Option<Spanned<String>>,
    ) -> Result<(Identity, String), ConfigError> {
        if let Err(e) = stagesync_certs::identity::validate_name(name.get_ref()) {
            return self.err(name.span(), "name", e.to_string());
        }
        let trust_domain = match trust_domain {
            Some(td) => {
                if let Err(e) = stagesync_certs::identity::validate_trust_domain(td.get_ref()) {
                    return self.err(td.span(), "trust_domain", e.to_string());
                }
                td.get_ref().clone()
            }
            None => stagesync_certs::DEFAULT_TRUST_DOMAIN.to_string(),
        };
        let identity = Identity::new(&trust_domain, Kind::Agent, name.get_ref())
            .map_err(|e| self.error(name.span(), "name", e.to_string()))?;
        Ok((identity, trust_domain))
    }

    fn validate_listen(&self, listen: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        listen.get_ref().parse().or_else(|_| {
            self.err(
                listen.span(),
                "listen",
                format!(
                    "{:?} is not an address to listen on: use IP:PORT, e.g. \"0.0.0.0:7443\"",
                    listen.get_ref()
                ),
            )
        })
    }

    fn validate_jobs(&self, raw: &RawJobs, masking: bool) -> Result<JobLimits, ConfigError> {
        let secs = |v: &Option<Spanned<u64>>, key: &str, default: u64| match v {
            Some(s) if *s.get_ref() == 0 => self.err(s.span(), key, "must be at least 1 second"),
            Some(s) => Ok(Duration::from_secs(*s.get_ref())),
            None => Ok(Duration::from_secs(default)),
        };
        Ok(JobLimits {
            controller_timeout: secs(
                &raw.controller_timeout_secs,
                "jobs.controller_timeout_secs",
                60,
            )?,
            stall_timeout: secs(&raw.stall_timeout_secs, "jobs.stall_timeout_secs", 120)?,
            ticket_ttl: secs(&raw.ticket_ttl_secs, "jobs.ticket_ttl_secs", 600)?,
            lane_min_table_bytes: match &raw.lane_min_table_mb {
                Some(mb) if *mb.get_ref() > 1 << 30 => {
                    let why = "must be at most 1073741824 (1 PiB)";
                    return self.err(mb.span(), "jobs.lane_min_table_mb", why);
                }
                Some(mb) => *mb.get_ref() << 20,
                None => 0,
            },
            split_table_bytes: match &raw.split_table_mb {
                Some(mb) if *mb.get_ref() > 1 << 30 => {
                    let why = "must be at most 1073741824 (1 PiB); 0 never splits";
                    return self.err(mb.span(), "jobs.split_table_mb", why);
                }
                Some(mb) if *mb.get_ref() == 0 => None,
                Some(mb) => Some(*mb.get_ref() << 20),
                None => Some(4096 << 20),
            },
            status_interval: match &raw.status_interval_ms {
                Some(ms) if !(50..=3_600_000).contains(ms.get_ref()) => {
                    let why = "must be 50 to 3600000 (one hour)";
                    return self.err(ms.span(), "jobs.status_interval_ms", why);
                }
                Some(ms) => Duration::from_millis(*ms.get_ref()),
                None => Duration::from_millis(500),
            },
            worker_threads: match &raw.worker_threads {
                Some(n) if !(1..=256).contains(n.get_ref()) => {
                    return self.err(n.span(), "jobs.worker_threads", "must be 1 to 256");
                }
                Some(n) => *n.get_ref() as usize,
                None => default_workers(masking),
            },
        })
    }

    /// The AWS profile files, when given: they must be readable files.
    /// `[masking]`: the rules file (its own errors name its own lines) and
    /// the key file, only the agent's user may read.
    /// the key file, only the agent's user may read; the peers and places a
    /// masked database may go to unmasked.
    fn validate_masking(
        &self,
        raw: Option<&RawMasking>,
        trust_domain: &str,
    ) -> Result<Option<crate::mask::Masking>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let rules = crate::mask::rules::load(&self.resolve(raw.rules.get_ref()))?;
        let key = crate::mask::MaskKey::load(&self.resolve(raw.key_file.get_ref()))
            .map_err(|m| self.error(raw.key_file.span(), "masking.key_file", m))?;
        let unmasked_peers = raw
            .unmasked_peers
            .iter()
            .map(|p| self.identity(p, Kind::Agent, "masking.unmasked_peers", trust_domain))
            .collect::<Result<Vec<_>, _>>()?;
        let unmasked_backup_to =
            self.places(&raw.unmasked_backup_to, "masking.unmasked_backup_to")?;
        Ok(Some(crate::mask::Masking {
            rules: std::sync::Arc::new(rules),
            key: std::sync::Arc::new(key),
            unmasked_peers,
            unmasked_backup_to,
        }))
    }

    fn validate_s3(&self, raw: &RawS3) -> Result<stagesync_s3::ProfileFilePaths, ConfigError> {
        let file = |given: &Option<Spanned<String>>, key: &str| match given {
            Some(p) => {
                let path = self.resolve(p.get_ref());
                if !path.is_file() {
                    let why = format!("{} is not a readable file", path.display());
                    return self.err(p.span(), key, why);
                }
                Ok(Some(path))
            }
            None => Ok(None),
        };
        Ok(stagesync_s3::ProfileFilePaths {
            config: file(&raw.config_file, "s3.config_file")?,
            credentials: file(&raw.credentials_file, "s3.credentials_file")?,
        })
    }

    fn validate_tls(
        &self,
        raw: &RawTls,
        name: &Spanned<String>,
        identity: &Identity,
    ) -> Result<TlsFiles, ConfigError> {
        let files = TlsFiles {
            ca: self.resolve(raw.ca.get_ref()),
            cert: self.resolve(raw.cert.get_ref()),
            key: self.resolve(raw.key.get_ref()),
        };
        let loaded = match ReloadingServerConfig::load(files.clone()) {
            Ok(l) => l,
            Err(e) => {
                let (span, key) = match &e {
                    TlsError::Read { what, .. } | TlsError::NoCertificate { what, .. } => {
                        if what.starts_with("CA") {
                            (raw.ca.span(), "tls.ca")
                        } else if *what == "private key" {
                            (raw.key.span(), "tls.key")
                        } else {
                            (raw.cert.span(), "tls.cert")
                        }
                    }
                    TlsError::BadKey { .. } | TlsError::Config { .. } => {
                        (raw.key.span(), "tls.key")
                    }
                    TlsError::Identity { .. } => (raw.cert.span(), "tls.cert"),
                };
                return self.err(span, key, e.to_string());
            }
        };
        let actual = loaded.identity();
        if &actual != identity {
            return self.err(
                name.span(),
                "name",
                format!(
                    "this agent is configured as {identity} but its certificate {} names {actual}: fix `name`/`trust_domain`, or issue a certificate with `stagesync certs issue agent {}`",
                    files.cert.display(),
                    identity.name
                ),
            );
        }
        Ok(files)
    }

    fn validate_policy(&self, raw: &RawPolicy, trust_domain: &str) -> Result<Policy, ConfigError> {
        if raw.controllers.get_ref().is_empty() {
            return self.err(
                raw.controllers.span(),
                "policy.controllers",
                "no controller may command this agent: list at least one controller name",
            );
        }
        let identities = |list: &[Spanned<String>], kind: Kind, key: &str| {
            list.iter()
                .map(|s| self.identity(s, kind, key, trust_domain))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Policy {
            may_dump: self.patterns(&raw.may_dump, "policy.may_dump")?,
            may_overwrite: self.patterns(&raw.may_overwrite, "policy.may_overwrite")?,
            controllers: identities(
                raw.controllers.get_ref(),
                Kind::Controller,
                "policy.controllers",
            )?,
            peers: identities(&raw.peers, Kind::Agent, "policy.peers")?,
            may_backup_to: self.places(&raw.may_backup_to, "policy.may_backup_to")?,
            may_restore_from: self.places(&raw.may_restore_from, "policy.may_restore_from")?,
            may_receive_unmasked: raw
                .may_receive_unmasked
                .as_ref()
                .is_some_and(|b| *b.get_ref()),
        })
    }

    /// A list of globs; an empty one would silently match nothing.
    /// Place patterns, each checked where it is written.
    fn places(&self, list: &[Spanned<String>], key: &str) -> Result<PlacePatterns, ConfigError> {
        for p in list {
            if let Err(e) = PlacePatterns::new(std::slice::from_ref(p.get_ref())) {
                return self.err(p.span(), key, e);
            }
        }
        let all: Vec<String> = list.iter().map(|p| p.get_ref().clone()).collect();
        PlacePatterns::new(&all).map_err(|e| ConfigError {
            file: self.path.to_path_buf(),
            line: 1,
            key: key.to_string(),
            message: e,
        })
    }

    fn patterns(&self, list: &[Spanned<String>], key: &str) -> Result<Patterns, ConfigError> {
        for p in list {
            if let Err(e) = Glob::new(p.get_ref()) {
                return self.err(
                    p.span(),
                    key,
                    format!("bad glob {:?}: {}", p.get_ref(), e.kind()),
                );
            }
            if p.get_ref().is_empty() {
                return self.err(p.span(), key, "an empty pattern matches nothing; remove it");
            }
        }
        let all: Vec<String> = list.iter().map(|p| p.get_ref().clone()).collect();
        Patterns::new(&all).map_err(|e| ConfigError {
            file: self.path.to_path_buf(),
            line: 1,
            key: key.to_string(),
            message: e.to_string(),
        })
    }

    /// A controller or peer: a bare name in this agent's trust domain, or a
    /// full `spiffe://` identity that must be of the same domain and kind.
    fn identity(
        &self,
        s: &Spanned<String>,
        kind: Kind,
        key: &str,
        trust_domain: &str,
    ) -> Result<Identity, ConfigError> {
        let v = s.get_ref();
        let id = if v.starts_with("spiffe://") {
            v.parse::<Identity>()
        } else {
            Identity::new(trust_domain, kind, v)
        };
        match id {
            Ok(id) if id.kind == kind && id.trust_domain == trust_domain => Ok(id),
            Ok(id) => self.err(
                s.span(),
                key,
                format!("{id} is not a {kind} of trust domain {trust_domain:?}"),
            ),
            Err(e) => self.err(s.span(), key, e.to_string()),
        }
    }
}

/// A quarter of the host's cores, at least one; every core for an agent
/// that masks (masking is its own CPU work, row by row on the lanes).
fn default_workers(masking: bool) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match masking {
        true => cores,
        false => cores.div_ceil(4),
    }
}

/// Where an optional key stands; nowhere (line 1) when it was left out.
pub(super) fn span_of<T>(v: &Option<Spanned<T>>) -> Range<usize> {
    v.as_ref().map(|s| s.span()).unwrap_or(0..0)
}

fn check_writable_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!(
            "{} is not a directory: create it, owned by the agent's user",
            dir.display()
        ));
    }
    let probe = dir.join(format!(".stagesync-probe-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "{} is not writable by this agent: {e}",
            dir.display()
        )),
    }
}
