//! Listing one side in key order into a bounded channel, so a listing never
//! holds more than a few pages no matter how big the bucket is.
//!
//! Two ways to list, both giving the same keys in the same order:
//! - `flat`: ListObjectsV2 without a delimiter, 1,000 keys a request. The
//!   cheapest on S3 itself.
//! - `tree`: one folder (`/`-delimited prefix) at a time, depth first, the
//!   next folders' first pages fetched ahead in parallel. For servers whose
//!   flat listing walks the whole store for every page (file-system backed
//!   servers such as s3s-fs); it is also how rclone lists by default.
//!
//! Depth-first order over delimited listings is key order: every key under a
//! folder `p/` sorts after `p/` itself and before anything that sorts after
//! `p/` without starting with it, so a folder's keys can be spliced in where
//! the folder appears.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as Atomic};

use aws_sdk_s3::Client;
use futures::FutureExt;
use futures::future::RemoteHandle;
use tokio::sync::mpsc;

use crate::error::{SyncError, Target, classify, side_error};
use crate::progress::{Event, Progress};
use crate::spec::{Filter, ListingMode, S3Location};

/// S3 returns at most 1,000 keys a page; two pages of slack lets the
/// listing run ahead of the merge without growing.
const CHANNEL_DEPTH: usize = 2_000;
/// Folders whose first page a tree walk fetches ahead of need. Bounds both
/// the extra requests in flight and the pages held (each at most 1,000 keys).
const PREFETCH: usize = 16;
const DELIMITER: &str = "/";

/// One object as listed, with its key relative to the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listed {
    pub key: String,
    pub size: u64,
    /// Without the surrounding quotes.
    pub etag: Option<String>,
}

pub(crate) type Listing = mpsc::Receiver<Result<Listed, SyncError>>;

/// Starts listing `location` in key order. The receiver ends after the last
/// key, or after one error.
pub(crate) fn spawn(
    client: Client,
    location: S3Location,
    filter: Filter,
    mode: ListingMode,
    target: Target,
    progress: Progress,
) -> Listing {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    tokio::spawn(async move {
        let lister = Lister {
            client,
            location,
            filter,
            target,
            progress,
            tx,
        };
        let listed = match mode {
            ListingMode::Flat => lister.flat().await,
            ListingMode::Tree => lister.tree().await,
        };
        if let Err(err) = listed {
            let _ = lister.tx.send(Err(err)).await;
        }
    });
    rx
}

/// Where the next page of one prefix starts.
#[derive(Clone, Debug, Default)]
struct Resume {
    continuation: Option<String>,
    start_after: Option<String>,
}

/// One page: objects and (in a tree walk) folders, merged in key order.
struct Page {
    entries: VecDeque<Entry>,
    /// `None` after the prefix's last page.
    next: Option<Resume>,
}

enum Entry {
    /// Full key, size, ETag.
    Object(String, u64, Option<String>),
    /// A folder, with its first page when fetched ahead.
    Folder(String, Option<RemoteHandle<Result<Page, SyncError>>>),
}

impl Entry {
    fn key(&self) -> &str {
        match self {
            Entry::Object(k, ..) | Entry::Folder(k, _) => k,
        }
    }
}

/// One folder being walked.
struct Frame {
    prefix: String,
    entries: VecDeque<Entry>,
    next: Option<Resume>,
}

struct Lister {
    client: Client,
    location: S3Location,
    filter: Filter,
    target: Target,
    progress: Progress,
    tx: mpsc::Sender<Result<Listed, SyncError>>,
}

impl Lister {
    async fn flat(&self) -> Result<(), SyncError> {
        let mut resume = Resume::default();
        loop {
            let page = fetch(
                &self.client,
                &self.target,
                &self.location.prefix,
                None,
                resume,
            )
            .await?;
            if !self.emit(page.entries).await {
                return Ok(());
            }
            match page.next {
                Some(next) => resume = next,
                None => return Ok(()),
            }
        }
    }

    async fn tree(&self) -> Result<(), SyncError> {
        let ahead = Arc::new(AtomicUsize::new(0));
        let root = self.folder_page(&self.location.prefix, Resume::default());
        let page = root.await?;
        let mut stack = vec![Frame {
            prefix: self.location.prefix.clone(),
            entries: page.entries,
            next: page.next,
        }];
        self.prefetch(&mut stack, &ahead);
        while let Some(top) = stack.last_mut() {
            match top.entries.pop_front() {
                Some(object @ Entry::Object(..)) => {
                    // Objects up to the next folder go out as one batch.
                    let mut batch = VecDeque::from([object]);
                    while matches!(top.entries.front(), Some(Entry::Object(..))) {
                        batch.extend(top.entries.pop_front());
                    }
                    if !self.emit(batch).await {
                        return Ok(());
                    }
                    continue;
                }
                Some(Entry::Folder(prefix, ahead_page)) => {
                    let page = match ahead_page {
                        Some(handle) => {
                            ahead.fetch_sub(1, Atomic::Relaxed);
                            handle.await?
                        }
                        None => self.folder_page(&prefix, Resume::default()).await?,
                    };
                    stack.push(Frame {
                        prefix,
                        entries: page.entries,
                        next: page.next,
                    });
                }
                None => match top.next.take() {
                    Some(resume) => {
                        let page = self.folder_page(&top.prefix, resume).await?;
                        top.entries = page.entries;
                        top.next = page.next;
                    }
                    None => {
                        stack.pop();
                    }
                },
            }
            self.prefetch(&mut stack, &ahead);
        }
        Ok(())
    }

    fn folder_page(
        &self,
        prefix: &str,
        resume: Resume,
    ) -> impl Future<Output = Result<Page, SyncError>> + Send + 'static {
        let (client, target, prefix) =
            (self.client.clone(), self.target.clone(), prefix.to_string());
        async move { fetch(&client, &target, &prefix, Some(DELIMITER), resume).await }
    }

    /// Starts fetching the first page of the next folders the walk will
    /// enter, in walk order, until `PREFETCH` pages are out.
    fn prefetch(&self, stack: &mut [Frame], ahead: &AtomicUsize) {
        let mut seen = 0;
        for frame in stack.iter_mut().rev() {
            for entry in frame.entries.iter_mut() {
                if let Entry::Folder(prefix, slot) = entry {
                    seen += 1;
                    if slot.is_none() && ahead.load(Atomic::Relaxed) < PREFETCH {
                        let (run, handle) =
                            self.folder_page(prefix, Resume::default()).remote_handle();
                        tokio::spawn(run);
                        *slot = Some(handle);
                        ahead.fetch_add(1, Atomic::Relaxed);
                    }
                    if seen >= PREFETCH {
                        return;
                    }
                }
            }
        }
    }

    /// Sends the accepted objects; false once nobody is listening.
    async fn emit(&self, entries: VecDeque<Entry>) -> bool {
        let (mut objects, mut bytes) = (0, 0);
        for entry in entries {
            let Entry::Object(key, size, etag) = entry else {
                continue;
            };
            let Some(relative) = key.strip_prefix(self.location.prefix.as_str()) else {
                continue;
            };
            // A "folder" marker equal to the prefix has no name of its own.
            if relative.is_empty() || !self.filter.accepts(relative) {
                continue;
            }
            objects += 1;
            bytes += size;
            let listed = Listed {
                key: relative.to_string(),
                size,
                etag,
            };
            if self.tx.send(Ok(listed)).await.is_err() {
                return false; // the merge stopped
            }
        }
        (self.progress)(Event::Listed {
            side: self.target.side,
            objects,
            bytes,
        });
        true
    }
}

/// One ListObjectsV2 page under `prefix`.
async fn fetch(
    client: &Client,
    target: &Target,
    prefix: &str,
    delimiter: Option<&str>,
    resume: Resume,
) -> Result<Page, SyncError> {
    let page = client
        .list_objects_v2()
        .bucket(&target.bucket)
        .prefix(prefix)
        .set_delimiter(delimiter.map(str::to_string))
        .set_continuation_token(resume.continuation)
        .set_start_after(resume.start_after)
        .send()
        .await
        .map_err(|e| side_error(target.clone(), "ListObjectsV2", classify(&e)))?;

    let objects = page.contents().iter().filter_map(|o| {
        let key = o.key()?.to_string();
        let size = o.size().unwrap_or(0).max(0) as u64;
        let etag = o.e_tag().map(|t| t.trim_matches('"').to_string());
        Some(Entry::Object(key, size, etag))
    });
    let folders = page
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        // A folder equal to the prefix would be walked forever.
        .filter(|p| *p != prefix && p.starts_with(prefix))
        .map(|p| Entry::Folder(p.to_string(), None));
    let entries = merge_by_key(objects.collect(), folders.collect());

    let last_key = entries.back().map(|e| e.key().to_string());
    let next = if !page.is_truncated().unwrap_or(false) {
        None
    } else {
        // Some S3-compatible servers mark a page truncated without a
        // continuation token; resuming after the last key works everywhere.
        match (page.next_continuation_token(), last_key) {
            (Some(token), _) => Some(Resume {
                continuation: Some(token.to_string()),
                start_after: None,
            }),
            (None, Some(last)) => Some(Resume {
                continuation: None,
                start_after: Some(last),
            }),
            (None, None) => None,
        }
    };
    Ok(Page { entries, next })
}

/// Objects and folders of one page are each sorted; interleave them.
fn merge_by_key(objects: VecDeque<Entry>, folders: VecDeque<Entry>) -> VecDeque<Entry> {
    if folders.is_empty() {
        return objects;
    }
    let (mut a, mut b) = (objects, folders);
    let mut out = VecDeque::with_capacity(a.len() + b.len());
    loop {
        let take_a = match (a.front(), b.front()) {
            (Some(x), Some(y)) => x.key() <= y.key(),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        out.extend(if take_a { a.pop_front() } else { b.pop_front() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(k: &str) -> Entry {
        Entry::Object(k.into(), 0, None)
    }
    fn folder(k: &str) -> Entry {
        Entry::Folder(k.into(), None)
    }

    #[test]
    fn folders_take_their_place_in_key_order() {
        // "a.txt" < "a/" < "a0": '.' < '/' < '0'.
        let objects = VecDeque::from([object("a.txt"), object("a0"), object("b")]);
        let folders = VecDeque::from([folder("a/"), folder("c/")]);
        let merged: Vec<String> = merge_by_key(objects, folders)
            .iter()
            .map(|e| e.key().to_string())
            .collect();
        assert_eq!(merged, ["a.txt", "a/", "a0", "b", "c/"]);
    }
}
