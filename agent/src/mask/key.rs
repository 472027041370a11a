//! The masking key: 32 or more random bytes in a file only the agent may
//! read. Only a key derived from it is kept in memory; neither ever
//! appears in SQL, a log, a command line or a message.

use std::fmt;
use std::path::Path;

/// The least key material a key file holds.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Clone)]
pub struct MaskKey {
    k: [u8; 32],
}

impl fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MaskKey(..)")
    }
}

impl MaskKey {
    /// The key in `path`: a file only its owner may read, of at least
    /// [`MIN_KEY_BYTES`] bytes.
    pub fn load(path: &Path) -> Result<MaskKey, String> {
        crate::pg::secret::check_file(path)
            .map_err(|e| e.replace("password file", "masking key file"))?;
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read the masking key file {}: {e}", path.display()))?;
        Self::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<MaskKey, String> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "a masking key needs at least {MIN_KEY_BYTES} random bytes (this has {}): head -c 32 /dev/urandom > FILE",
                bytes.len()
            ));
        }
        Ok(MaskKey {
            k: blake3::derive_key("stagesync 2026-12 column masking", bytes),
        })
    }

    /// The keyed hash of `value` as a `kind` of value.
    pub fn hash(&self, kind: &str, value: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.k);
        h.update(kind.as_bytes()).update(&[0]).update(value);
        *h.finalize().as_bytes()
    }

    /// `n` keyed bytes for `value` as a `kind` of value.
    pub fn stream(&self, kind: &str, value: &[u8], n: usize) -> Vec<u8> {
        let mut h = blake3::Hasher::new_keyed(&self.k);
        h.update(kind.as_bytes()).update(&[0]).update(value);
        let mut out = vec![0; n];
        h.finalize_xof().fill(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_key_is_refused_and_a_key_never_prints() {
        assert!(
            MaskKey::from_bytes(&[7; 31])
                .unwrap_err()
                .contains("at least 32")
        );
        let k = MaskKey::from_bytes(&[7; 32]).unwrap();
        assert_eq!(format!("{k:?}"), "MaskKey(..)");
        assert_ne!(
            k.hash("email", b"a"),
            k.hash("name", b"a"),
            "kinds are kept apart"
        );
        assert_eq!(k.stream("text", b"a", 40).len(), 40);
    }
}
