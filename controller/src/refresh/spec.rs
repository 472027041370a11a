//! What one pair's refresh needs: where the data comes from (a live
//! database behind a source agent, or a backup in S3), where it goes, and
//! how it moves.

use std::collections::HashMap;

use stagesync_proto::v1 as pb;

use crate::client::AgentTarget;

/// Everything one pair's refresh needs.
#[derive(Clone, Debug)]
pub struct PairSpec {
    pub source: PairSource,
    pub dest: AgentTarget,
    /// The address the source agent dials for the destination, when it is
    /// not the one the controller uses (a private network between hosts).
    pub dest_peer_address: Option<String>,
    pub dest_db: String,
    pub owner: String,
    pub mode: pb::Mode,
    /// Workers: the whole restore in parallel mode; indexes, constraints and
    /// triggers after the data in stream mode (1: one pass).
    pub jobs: u32,
    /// Stream mode: at most this many concurrent data lanes (None: `jobs`;
    /// 1: one data stream). Never more than `jobs`.
    pub lanes: Option<u32>,
    pub dump: pb::DumpOptions,
    pub restore: pb::RestoreOptions,
    pub post_restore_sql: String,
    /// Values for `${NAME}` in the post-restore SQL (secrets: never logged).
    pub params: HashMap<String, String>,
    /// Rows staging keeps of its own, tables it empties.
    pub staging: pb::StagingRules,
    /// zstd on the wire: by default on, except between agents on one host.
    pub compress: Compress,
    /// The plan asks for the rows unmasked (the agents decide).
    pub unmasked: bool,
    /// How copy lanes carry rows: binary where both ends allow, or text.
    pub copy_format: CopyFormat,
}

/// Where a pair's data comes from.
#[derive(Clone, Debug)]
pub enum PairSource {
    /// A live database, dumped by its agent and streamed to the destination.
    Agent {
        target: AgentTarget,
        database: String,
    },
    /// A backup in S3, read by the destination agent itself.
    Backup(BackupSource),
}

/// A pair's source when it is a backup in S3 rather than a live database.
#[derive(Clone, Debug)]
pub struct BackupSource {
    /// Where the backups are (`s3://bucket/prefix/`, the database's
    /// folder below it).
    pub place: stagesync_s3::S3Location,
    /// Profile, region, endpoint: used here to pick the backup, and by the
    /// destination agent (with its own host's credentials) to read it.
    pub side: stagesync_s3::SideConfig,
    /// AWS profile files here (default: the standard chain).
    pub files: stagesync_s3::ProfileFilePaths,
    pub database: String,
    /// A backup by its time stamp; the newest complete one when unset.
    pub taken: Option<String>,
}

impl PairSpec {
    /// A refresh of `dest_db` from the live `source_db`.
    pub fn new(
        source: AgentTarget,
        source_db: &str,
        dest: AgentTarget,
        dest_db: &str,
        owner: &str,
    ) -> Self {
        let source = PairSource::Agent {
            target: source,
            database: source_db.to_string(),
        };
        PairSpec::with_source(source, dest, dest_db, owner)
    }

    /// A refresh of `dest_db` from `source`, with the default options.
    pub fn with_source(source: PairSource, dest: AgentTarget, dest_db: &str, owner: &str) -> Self {
        PairSpec {
            source,
            dest,
            dest_peer_address: None,
            dest_db: dest_db.to_string(),
            owner: owner.to_string(),
            mode: pb::Mode::Stream,
            jobs: 2,
            lanes: None,
            dump: pb::DumpOptions::default(),
            restore: pb::RestoreOptions::default(),
            post_restore_sql: String::new(),
            params: HashMap::new(),
            staging: pb::StagingRules::default(),
            compress: Compress::Auto,
            unmasked: false,
            copy_format: CopyFormat::Auto,
        }
    }

    /// The source database's name.
    pub fn source_db(&self) -> &str {
        match &self.source {
            PairSource::Agent { database, .. } => database,
            PairSource::Backup(b) => &b.database,
        }
    }

    /// The source agent, when the source is a live database.
    pub fn source_agent(&self) -> Option<&AgentTarget> {
        match &self.source {
            PairSource::Agent { target, .. } => Some(target),
            PairSource::Backup(_) => None,
        }
    }

    /// The agents this refresh involves, each once.
    pub fn agents(&self) -> Vec<&AgentTarget> {
        let mut agents = vec![&self.dest];
        if let Some(s) = self.source_agent()
            && s.address != self.dest.address
        {
            agents.push(s);
        }
        agents
    }

    /// The address the source agent dials for the destination.
    pub fn dest_address_for_peer(&self) -> &str {
        self.dest_peer_address
            .as_deref()
            .unwrap_or(&self.dest.address)
    }
}

/// The format a copy lane's rows travel in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyFormat {
    /// PostgreSQL's binary COPY format for every table whose columns allow
    /// it, when both agents can and both servers run one major version
    /// (cheaper for both servers, the destination's above all); text for
    /// the rest.
    #[default]
    Auto,
    /// Text for every table.
    Text,
}

/// Whether the dump is compressed on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compress {
    /// zstd, unless the destination agent is reached on a loopback address
    /// (both agents on one host), where compressing only costs CPU.
    #[default]
    Auto,
    Always,
    Never,
}

impl Compress {
    /// Decides for a destination reached at `address` (`HOST:PORT`).
    pub fn wanted(self, address: &str) -> bool {
        match self {
            Compress::Always => true,
            Compress::Never => false,
            Compress::Auto => !is_loopback(address),
        }
    }
}

fn is_loopback(address: &str) -> bool {
    let host = address
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(address)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_off_only_on_one_host_by_default() {
        for (addr, want) in [
            ("127.0.0.1:7443", false),
            ("[::1]:7443", false),
            ("localhost:7443", false),
            ("10.0.0.7:7443", true),
            ("db1.example.com:7443", true),
        ] {
            assert_eq!(Compress::Auto.wanted(addr), want, "{addr}");
        }
        assert!(Compress::Always.wanted("127.0.0.1:1"));
        assert!(!Compress::Never.wanted("10.0.0.7:1"));
    }
}
