//! The privacy guard: personal data is masked in the source agent, on the
//! copy lanes, before a byte of it leaves the host. The rules and the key
//! are the source agent's own (`masking.rules`, `masking.key_file`); no
//! plan can weaken them.
//!
//! `rules.rs` reads the rules file, `key.rs` the key, `transform.rs` is
//! what a rule does to a value, `row.rs` takes COPY text rows apart,
//! `columns.rs` checks the rules against the live schema (unknown tables
//! and columns, types a transform cannot write, and in strict mode every
//! column unclassified), and `lane.rs` rewrites a lane's CopyData messages
//! row by row; `tools.rs` is the `Mask` RPC (check, suggest, preview).

pub mod columns;
pub mod key;
pub mod lane;
pub mod noise;
pub mod row;
pub mod rules;
pub mod tools;
pub mod transform;

use std::sync::Arc;

pub use columns::{TableMask, check};
pub use key::MaskKey;
pub use lane::MaskedRows;
pub use rules::Rules;
pub use transform::Transform;

/// What the source agent masks with: its rules and its key.
#[derive(Clone, Debug)]
pub struct Masking {
    pub rules: Arc<Rules>,
    pub key: Arc<MaskKey>,
    /// The only peers a masked database may be streamed to unmasked.
    pub unmasked_peers: Vec<stagesync_certs::Identity>,
    /// The only backup places a masked database may be dumped to.
    pub unmasked_backup_to: crate::config::places::PlacePatterns,
}
