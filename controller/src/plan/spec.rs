//! From a validated plan to what one refresh needs: the agents to dial and
//! the identities they must present, the pair's settings and parameters,
//! and the backup it restores when its source is one.

use stagesync_certs::{Identity, Kind};

use super::Plan;
use crate::client::AgentTarget;
use crate::refresh::{PairSource, PairSpec};

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
        let source = match self.backup_source(name) {
            Some(backup) => PairSource::Backup(backup),
            None => PairSource::Agent {
                target: self
                    .agent_target(&p.source_agent, trust_domain)
                    .ok_or("unknown source agent")?,
                database: p.source_db.clone(),
            },
        };
        let mut spec = PairSpec::with_source(source, dest, &p.dest_db, &p.owner);
        spec.dest_peer_address = self.agents[&p.dest_agent].peer_endpoint.clone();
        spec.mode = p.mode;
        spec.jobs = p.jobs;
        spec.lanes = p.lanes;
        spec.copy_format = p.copy_format;
        spec.compress = p.compress;
        spec.dump = p.dump.clone();
        spec.restore = p.restore.clone();
        spec.post_restore_sql = p.post_restore_sql.clone();
        spec.staging = p.staging.clone();
        spec.unmasked = p.unmasked;
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
}
