//! Deciding, key by key, what to do: the merge of two sorted listings and
//! the content comparison. Pure logic; the I/O lives elsewhere.

use std::cmp::Ordering;

use crate::listing::Listed;
use crate::progress::CopyReason;

/// User metadata stagesync writes on objects it copies. The source's ETag
/// identifies what was copied even when neither ETag is a plain MD5
/// (multipart uploads, SSE-KMS); the MD5, when known, lets a copy of a copy
/// (prod → stage → dev) still be compared by content.
pub const META_SOURCE_ETAG: &str = "stagesync-source-etag";
pub const META_MD5: &str = "stagesync-md5";

/// What the listing alone says about a pair of objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Same,
    Copy(CopyReason),
    /// Sizes match but the ETags cannot be compared: ask the metadata.
    AskMetadata,
}

/// A plain ETag is the hex MD5 of the content: 32 hex digits, no `-N`.
pub(crate) fn is_plain_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn compare(source: &Listed, dest: &Listed) -> Verdict {
    if source.size != dest.size {
        return Verdict::Copy(CopyReason::SizeDiffers);
    }
    match (source.etag.as_deref(), dest.etag.as_deref()) {
        (Some(s), Some(d)) if is_plain_md5(s) && is_plain_md5(d) => {
            if s.eq_ignore_ascii_case(d) {
                Verdict::Same
            } else {
                Verdict::Copy(CopyReason::ContentDiffers)
            }
        }
        _ => Verdict::AskMetadata,
    }
}

/// What stagesync knows about an object's content from its headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub etag: Option<String>,
    /// `stagesync-source-etag`, on objects stagesync wrote.
    pub copied_from: Option<String>,
    /// The content MD5: the ETag when plain, else `stagesync-md5`.
    pub md5: Option<String>,
}

impl Identity {
    pub(crate) fn new(
        etag: Option<&str>,
        metadata: Option<&std::collections::HashMap<String, String>>,
    ) -> Self {
        let etag = etag.map(|t| t.trim_matches('"').to_ascii_lowercase());
        let meta = |name: &str| {
            metadata
                .and_then(|m| m.get(name))
                .map(|v| v.to_ascii_lowercase())
        };
        let md5 = etag
            .clone()
            .filter(|t| is_plain_md5(t))
            .or_else(|| meta(META_MD5).filter(|v| is_plain_md5(v)));
        Identity {
            etag,
            copied_from: meta(META_SOURCE_ETAG),
            md5,
        }
    }
}

/// The decision for sizes that match but ETags that do not compare.
/// Never by timestamp: only recorded identities count, and when nothing is
/// known the object is copied.
pub(crate) fn same_content(source: &Identity, dest: &Identity) -> bool {
    if let (Some(from), Some(etag)) = (&dest.copied_from, &source.etag)
        && from == etag
    {
        return true;
    }
    matches!((&source.md5, &dest.md5), (Some(a), Some(b)) if a == b)
}

/// Which head to take next, given the heads of both listings.
pub(crate) fn next_step(source: Option<&Listed>, dest: Option<&Listed>) -> Option<Ordering> {
    match (source, dest) {
        (None, None) => None,
        (Some(_), None) => Some(Ordering::Less),
        (None, Some(_)) => Some(Ordering::Greater),
        // S3 lists in UTF-8 byte order, which is `str`'s order.
        (Some(s), Some(d)) => Some(s.key.as_str().cmp(d.key.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(key: &str, size: u64, etag: &str) -> Listed {
        Listed {
            key: key.into(),
            size,
            etag: Some(etag.into()),
        }
    }

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn compares_plain_etags_and_sizes() {
        assert_eq!(
            compare(&listed("k", 3, A), &listed("k", 3, A)),
            Verdict::Same
        );
        assert_eq!(
            compare(&listed("k", 3, A), &listed("k", 3, B)),
            Verdict::Copy(CopyReason::ContentDiffers)
        );
        assert_eq!(
            compare(&listed("k", 3, A), &listed("k", 4, A)),
            Verdict::Copy(CopyReason::SizeDiffers)
        );
        assert_eq!(
            compare(&listed("k", 3, "abc-2"), &listed("k", 3, A)),
            Verdict::AskMetadata
        );
    }

    #[test]
    fn metadata_identity() {
        let source = Identity::new(Some("\"abc-2\""), None);
        let mut meta = std::collections::HashMap::new();
        meta.insert(META_SOURCE_ETAG.to_string(), "abc-2".to_string());
        let dest = Identity::new(Some("def-3"), Some(&meta));
        assert!(same_content(&source, &dest));

        let changed = Identity::new(Some("abd-2"), None);
        assert!(!same_content(&changed, &dest));

        // A copy of a copy: both carry the content MD5.
        let mut m1 = std::collections::HashMap::new();
        m1.insert(META_MD5.to_string(), A.to_string());
        let s = Identity::new(Some("x-2"), Some(&m1));
        let d = Identity::new(Some(A), None);
        assert!(same_content(&s, &d));
        assert!(!same_content(&Identity::default(), &Identity::default()));
    }

    #[test]
    fn merge_order_is_byte_order() {
        let a = listed("a b", 1, A);
        let b = listed("a+b", 1, A);
        assert_eq!(next_step(Some(&a), Some(&b)), Some(Ordering::Less));
        let u = listed("é", 1, A);
        let z = listed("z", 1, A);
        assert_eq!(next_step(Some(&u), Some(&z)), Some(Ordering::Greater));
        assert_eq!(next_step(None, None), None);
    }
}
