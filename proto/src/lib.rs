//! The wire protocol between the stagesync controller and its agents
//! (package `stagesync.v1`), generated from `proto/stagesync/v1/*.proto`.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("stagesync.v1");
}

pub mod shape;
pub mod tomlfile;

pub use v1::agent_client::AgentClient;
pub use v1::agent_server::{Agent, AgentServer};

/// Info lists this feature when the agent can split a stream-mode dump:
/// pre-data and data streamed, the post-data section sent after them as a
/// file and restored by several workers (`StartDumpRequest.split_post_data`).
pub const FEATURE_SPLIT_POST_DATA: &str = "split-post-data";

/// Info lists this feature when the agent can move a split stream's table
/// data by COPY in several concurrent lanes (`Shape.data_lanes`), each
/// table's rows as the server's CopyData messages (version 2; version 1
/// carried bare COPY text, and such agents are not offered lanes).
pub const FEATURE_DATA_LANES: &str = "copy-lanes-2";

/// Info lists this feature when the agent hashes and checks a stream with
/// BLAKE3 (`Shape.digest`).
pub const FEATURE_BLAKE3: &str = "blake3-digest";

/// Info lists this feature when the agent hashes and checks a stream with
/// XXH3-128 (`Shape.digest`).
pub const FEATURE_XXH3: &str = "xxh3-digest";

/// Info lists this feature when the agent can send and take a copy lane's
/// rows in PostgreSQL's binary COPY format (`Shape.binary_rows`).
pub const FEATURE_BINARY_ROWS: &str = "binary-copy-rows";

/// The most copy lanes one refresh may use (each a COPY session on either
/// side).
pub const MAX_COPY_LANES: u32 = 16;

/// The most data lanes a stream may have: lane 0 (pg_dump's data of what
/// the copy lanes do not carry) and the copy lanes.
pub const MAX_DATA_LANES: u32 = MAX_COPY_LANES + 1;

/// gRPC metadata key an agent sets on every error status it makes itself
/// (its value names the kind: "permission-denied", "internal", ...), so a
/// client tells the agent's own answer from a transport failure without
/// reading the message.
pub const AGENT_ERROR_KEY: &str = "stagesync-agent-error";

/// The file in which a split stream's schema travels (see
/// `Shape.post_data_file`); the destination restores its post-data section.
pub const SCHEMA_FILE: &str = "schema.dump";

impl v1::Step {
    /// The step as an operator reads it in an error.
    pub fn label(self) -> &'static str {
        match self {
            v1::Step::Unspecified => "refresh",
            v1::Step::Prepare => "prepare",
            v1::Step::Connect => "connect",
            // pg_dump, or a copy lane reading its COPY on the snapshot.
            v1::Step::PgDump => "dump",
            v1::Step::Stream => "stream",
            v1::Step::PgRestore => "pg_restore",
            v1::Step::PostRestoreSql => "post-restore SQL",
            v1::Step::Swap => "swap",
            v1::Step::Abort => "abort",
            v1::Step::S3 => "s3",
        }
    }
}

impl std::fmt::Display for v1::Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl v1::JobError {
    /// The failed step (unspecified when the peer sent a value this build
    /// does not know).
    pub fn failed_step(&self) -> v1::Step {
        v1::Step::try_from(self.step).unwrap_or(v1::Step::Unspecified)
    }
}
