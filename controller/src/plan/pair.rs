//! Validating one pair: its two ends, its owner, its `after` list and its
//! preflight checks here; its options, post-restore SQL and copies in
//! `options`, `sql` and `copy`.

use std::collections::BTreeMap;

use stagesync_proto::tomlfile::{ConfigError, TomlFile};

use super::raw::{RawEnd, RawGit, RawOptions, RawPair, S};
use super::scope::Scope;
use super::{GitCheck, PlanAgent, PlanPair, Preflight, SourceBackup};

/// One pair being validated: the steps share its errors' key prefix
/// (`pairs.NAME`), its name, its table and the agents it may name.
pub(super) struct PairCheck<'a> {
    pub(super) at: Scope<'a>,
    name: &'a str,
    pub(super) raw: &'a RawPair,
    agents: &'a BTreeMap<String, PlanAgent>,
}

pub(super) fn validate_pair(
    f: &TomlFile<'_>,
    key: &str,
    name: &str,
    raw: &RawPair,
    defaults: &RawOptions,
    agents: &BTreeMap<String, PlanAgent>,
) -> Result<PlanPair, ConfigError> {
    let c = PairCheck {
        at: Scope::new(f, key),
        name,
        raw,
        agents,
    };
    let source_backup = c.ends()?;
    let owner = c.owner()?;
    c.not_into_its_own_source()?;
    let run = c.options(defaults)?;
    let (post_restore_sql, params) = c.post_restore()?;
    let staging = c.staging()?;
    let after = c.after()?;
    let copies = c.copies()?;
    let preflight = c.preflight()?;
    let unmasked = c.unmasked(source_backup.is_some())?;
    let (src, dst) = (raw.source.get_ref(), raw.dest.get_ref());
    Ok(PlanPair {
        name: name.to_string(),
        source_agent: agent_name(src).unwrap_or_default(),
        source_db: src.database.get_ref().clone(),
        source_backup,
        dest_agent: agent_name(dst).unwrap_or_default(),
        dest_db: dst.database.get_ref().clone(),
        owner,
        mode: run.mode,
        jobs: run.jobs,
        lanes: run.lanes,
        copy_format: run.copy_format,
        compress: run.compress,
        dump: run.dump,
        restore: run.restore,
        post_restore_sql,
        params,
        staging,
        after,
        copies,
        preflight,
        unmasked,
    })
}

fn agent_name(e: &RawEnd) -> Option<String> {
    e.agent.as_ref().map(|a| a.get_ref().clone())
}

impl PairCheck<'_> {
    /// The source, then the destination; the source's backup, if it is one.
    fn ends(&self) -> Result<Option<SourceBackup>, ConfigError> {
        let source_backup = self.end(&self.raw.source, "source")?;
        self.end(&self.raw.dest, "dest")?;
        Ok(source_backup)
    }

    /// One end: an agent's database, or (a source only) a backup of it.
    fn end(&self, end: &S<RawEnd>, which: &str) -> Result<Option<SourceBackup>, ConfigError> {
        let backup = self.agent_or_backup(end, which)?;
        let e = end.get_ref();
        if let (Some(t), None) = (&e.taken, &e.backup) {
            return self.at.err(
                t.span(),
                &format!("{which}.taken"),
                "`taken` picks one backup: it goes with `backup`",
            );
        }
        if e.database.get_ref().is_empty() {
            return self.at.err(
                e.database.span(),
                &format!("{which}.database"),
                "must not be empty",
            );
        }
        Ok(backup)
    }

    /// Exactly one of `agent` and `backup`, and a backup for a source only.
    fn agent_or_backup(
        &self,
        end: &S<RawEnd>,
        which: &str,
    ) -> Result<Option<SourceBackup>, ConfigError> {
        let e = end.get_ref();
        match (&e.agent, &e.backup) {
            (Some(_), Some(b)) => self.at.err(
                b.span(),
                &format!("{which}.backup"),
                "give either an agent or a backup, not both",
            ),
            (None, Some(b)) if which == "dest" => self.at.err(
                b.span(),
                "dest.backup",
                "a destination is a database on an agent, not a backup",
            ),
            (None, None) => self.at.err(
                end.span(),
                &format!("{which}.agent"),
                if which == "source" {
                    "missing: name the agent (or, for a source, a `backup` place)"
                } else {
                    "missing: name the agent"
                },
            ),
            (None, Some(b)) => self.source_backup(b, e).map(Some),
            (Some(a), None) => {
                self.known_agent(a, which)?;
                Ok(None)
            }
        }
    }

    fn source_backup(&self, b: &S<String>, e: &RawEnd) -> Result<SourceBackup, ConfigError> {
        let place = stagesync_s3::S3Location::parse(b.get_ref())
            .map_err(|m| self.at.error(b.span(), "source.backup", m))?;
        Ok(SourceBackup {
            place,
            taken: e.taken.as_ref().map(|t| t.get_ref().clone()),
        })
    }

    fn known_agent(&self, a: &S<String>, which: &str) -> Result<(), ConfigError> {
        if self.agents.contains_key(a.get_ref()) {
            return Ok(());
        }
        self.at.err(
            a.span(),
            &format!("{which}.agent"),
            format!(
                "no agent named {:?} in [agents] (known: {})",
                a.get_ref(),
                self.agents.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    }

    /// The role owning what is restored: the destination's, never the source's.
    fn owner(&self) -> Result<String, ConfigError> {
        if let Some(o) = &self.raw.source.get_ref().owner {
            return self.at.err(
                o.span(),
                "source.owner",
                "the owner belongs to the destination (dest.owner)",
            );
        }
        match &self.raw.dest.get_ref().owner {
            Some(owner) => Ok(owner.get_ref().clone()),
            None => self.at.err(
                self.raw.dest.span(),
                "dest.owner",
                "missing: the role that will own everything restored",
            ),
        }
    }

    /// `unmasked = true`: a live source's rows as they are; for a backup
    /// the manifest says what it holds.
    fn unmasked(&self, from_backup: bool) -> Result<bool, ConfigError> {
        match &self.raw.unmasked {
            Some(u) if *u.get_ref() && from_backup => self.at.err(
                u.span(),
                "unmasked",
                "a backup is restored as it was taken (its manifest says whether it is masked): remove `unmasked`",
            ),
            Some(u) => Ok(*u.get_ref()),
            None => Ok(false),
        }
    }

    fn not_into_its_own_source(&self) -> Result<(), ConfigError> {
        let (src, dst) = (self.raw.source.get_ref(), self.raw.dest.get_ref());
        if agent_name(src).is_some()
            && agent_name(src) == agent_name(dst)
            && src.database.get_ref() == dst.database.get_ref()
        {
            return self.at.err(
                self.raw.dest.span(),
                "dest",
                "the pair writes into its own source",
            );
        }
        Ok(())
    }

    /// The pairs this one runs after; whether they exist is checked once
    /// all pairs are known.
    fn after(&self) -> Result<Vec<String>, ConfigError> {
        self.raw
            .after
            .iter()
            .map(|a| {
                if a.get_ref() == self.name {
                    self.at
                        .err(a.span(), "after", "a pair cannot come after itself")
                } else {
                    Ok(a.get_ref().clone())
                }
            })
            .collect()
    }

    fn preflight(&self) -> Result<Preflight, ConfigError> {
        let p = &self.raw.preflight;
        let git = match &p.git {
            Some(g) => Some(self.git_check(g.get_ref())?),
            None => None,
        };
        Ok(Preflight {
            git,
            commands: p.commands.iter().map(|c| c.get_ref().clone()).collect(),
        })
    }

    /// The repository and refs are passed to git as arguments, hence no
    /// leading '-'.
    fn git_check(&self, g: &RawGit) -> Result<GitCheck, ConfigError> {
        for (v, k) in [
            (&g.repo, "repo"),
            (&g.source_ref, "source_ref"),
            (&g.dest_ref, "dest_ref"),
        ] {
            if v.get_ref().is_empty() || v.get_ref().starts_with('-') {
                return self.at.err(
                    v.span(),
                    &format!("preflight.git.{k}"),
                    "must be a repository or ref, not empty and not starting with '-'",
                );
            }
        }
        Ok(GitCheck {
            repo: g.repo.get_ref().clone(),
            source_ref: g.source_ref.get_ref().clone(),
            dest_ref: g.dest_ref.get_ref().clone(),
        })
    }
}
