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
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use aws_sdk_s3::Client;
use futures::FutureExt;
use futures::future::RemoteHandle;
use tokio::sync::{Semaphore, mpsc};

use backon::Retryable;

use crate::error::{SyncError, Target, classify, side_error};
use crate::progress::{Event, Progress};
use crate::spec::{Filter, ListingMode, RetrySettings, S3Location};
use crate::sync::{backoff, retryable};

/// S3 returns at most 1,000 keys a page; two pages of slack lets the
/// listing run ahead of the merge without growing.
const CHANNEL_DEPTH: usize = 2_000;
/// Listing requests a tree walk runs ahead of need, at most, at once.
const PREFETCH: usize = 16;
/// Pages fetched (or being fetched) ahead and not yet walked, at most: each
/// holds at most 1,000 keys. Larger than `PREFETCH`, so that pages already
/// fetched for folders further on do not keep the walk from fetching ahead
/// inside the folder it is entering.
const HELD_AHEAD: usize = 4 * PREFETCH;
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
    retry: RetrySettings,
    target: Target,
    progress: Progress,
) -> Listing {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let (guard_tx, guard_target) = (tx.clone(), target.clone());
    tokio::spawn(async move {
        let lister = Lister {
            client,
            location,
            filter,
            target,
            progress,
            tx,
            ahead: Arc::new(Semaphore::new(PREFETCH)),
            retry,
        };
        let run = async {
            let listed = match mode {
                ListingMode::Flat => lister.flat().await,
                ListingMode::Tree => lister.tree().await,
            };
            if let Err(err) = listed {
                let _ = lister.tx.send(Err(err)).await;
            }
        };
        // The merge takes a closed channel for the end of the listing, so a
        // listing that dies must say so rather than just stop.
        if AssertUnwindSafe(run).catch_unwind().await.is_err() {
            let err = SyncError::Request {
                target: Box::new(guard_target),
                operation: "ListObjectsV2",
                detail: "the listing stopped unexpectedly (an internal error); nothing was deleted"
                    .into(),
            };
            let _ = guard_tx.send(Err(err)).await;
        }
    });
    rx
}

/// Where the next page of one prefix starts.
#[derive(Clone, Debug, Default)]
struct Resume {
    continuation: Option<String>,
    start_after: Option<String>,
    /// A folder the previous page ended with. Resumed after by key, a
    /// server lists it again (its keys sort after its name), so it is
    /// dropped from the head of the next page.
    skip_folder: Option<String>,
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
    /// Permits for listing requests made ahead of need.
    ahead: Arc<Semaphore>,
    retry: RetrySettings,
}

impl Lister {
    async fn flat(&self) -> Result<(), SyncError> {
        let mut resume = Resume::default();
        loop {
            let page = fetch(
                &self.client,
                &self.target,
                &self.retry,
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
        let mut held = 0;
        let root = self.folder_page(&self.location.prefix, Resume::default(), false);
        let page = root.await?;
        let mut stack = vec![Frame {
            prefix: self.location.prefix.clone(),
            entries: page.entries,
            next: page.next,
        }];
        self.prefetch(&mut stack, &mut held);
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
                            held -= 1;
                            handle.await?
                        }
                        None => self.folder_page(&prefix, Resume::default(), false).await?,
                    };
                    stack.push(Frame {
                        prefix,
                        entries: page.entries,
                        next: page.next,
                    });
                }
                None => match top.next.take() {
                    Some(resume) => {
                        let page = self.folder_page(&top.prefix, resume, false).await?;
                        top.entries = page.entries;
                        top.next = page.next;
                    }
                    None => {
                        stack.pop();
                    }
                },
            }
            self.prefetch(&mut stack, &mut held);
        }
        Ok(())
    }

    /// One page of a folder; `ahead` waits for one of the permits for
    /// requests made ahead of need.
    fn folder_page(
        &self,
        prefix: &str,
        resume: Resume,
        ahead: bool,
    ) -> impl Future<Output = Result<Page, SyncError>> + Send + 'static {
        let (client, target, prefix) =
            (self.client.clone(), self.target.clone(), prefix.to_string());
        let retry = self.retry;
        let permits = ahead.then(|| self.ahead.clone());
        async move {
            let _permit = match &permits {
                Some(p) => p.acquire().await.ok(),
                None => None,
            };
            fetch(&client, &target, &retry, &prefix, Some(DELIMITER), resume).await
        }
    }

    /// Starts fetching the first page of the next folders the walk will
    /// enter, nearest first, while fewer than `HELD_AHEAD` are held; at
    /// most `PREFETCH` of them make their request at a time.
    fn prefetch(&self, stack: &mut [Frame], held: &mut usize) {
        for frame in stack.iter_mut().rev() {
            for entry in frame.entries.iter_mut() {
                if *held >= HELD_AHEAD {
                    return;
                }
                if let Entry::Folder(prefix, slot @ None) = entry {
                    let (run, handle) = self
                        .folder_page(prefix, Resume::default(), true)
                        .remote_handle();
                    tokio::spawn(run);
                    *slot = Some(handle);
                    *held += 1;
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
    retry: &RetrySettings,
    prefix: &str,
    delimiter: Option<&str>,
    resume: Resume,
) -> Result<Page, SyncError> {
    let Resume {
        continuation,
        start_after,
        skip_folder,
    } = resume;
    // The SDK retries each request; a page that still fails (its retry
    // quota spent on a throttling server) is retried here too, as objects
    // are, rather than ending the whole sync.
    let page = (|| async {
        client
            .list_objects_v2()
            .bucket(&target.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .set_continuation_token(continuation.clone())
            .set_start_after(start_after.clone())
            .send()
            .await
            .map_err(|e| classify(&e))
    })
    .retry(backoff(retry))
    .when(retryable)
    .await
    .map_err(|c| side_error(target.clone(), "ListObjectsV2", c))?;

    let objects = page.contents().iter().filter_map(|o| {
        let key = o.key()?.to_string();
        let size = o.size().unwrap_or(0).max(0) as u64;
        let etag = o.e_tag().map(|t| t.trim_matches('"').to_string());
        Some(Entry::Object(key, size, etag))
    });
    let folders = folders_of(
        prefix,
        page.common_prefixes().iter().filter_map(|p| p.prefix()),
        skip_folder.as_deref(),
    )
    .map_err(|detail| SyncError::Request {
        target: Box::new(target.clone()),
        operation: "ListObjectsV2",
        detail,
    })?;
    let entries = merge_by_key(objects.collect(), folders);
    let next = resume_after(
        &entries,
        page.is_truncated().unwrap_or(false),
        page.next_continuation_token(),
    );
    Ok(Page { entries, next })
}

/// The folders of a page under `prefix`, less `skip` (the folder the
/// previous page ended with).
fn folders_of<'a>(
    prefix: &str,
    listed: impl Iterator<Item = &'a str>,
    skip: Option<&str>,
) -> Result<VecDeque<Entry>, String> {
    let mut folders = VecDeque::new();
    for folder in listed {
        // A folder that does not extend the prefix would be walked forever,
        // and leaving it out would hide its keys (and, on the source side,
        // get them deleted from the destination).
        if folder.len() <= prefix.len() || !folder.starts_with(prefix) {
            return Err(format!(
                "listing `{prefix}` returned the folder `{folder}`, which is not inside it; refusing to compare or delete (try listing = \"flat\")"
            ));
        }
        if skip != Some(folder) {
            folders.push_back(Entry::Folder(folder.to_string(), None));
        }
    }
    Ok(folders)
}

/// Where the page after one ending with `entries` starts; `None` after the
/// last page. Some S3-compatible servers mark a page truncated without a
/// continuation token; resuming after the last key works everywhere, and
/// after a folder, the folder must then be skipped.
fn resume_after(entries: &VecDeque<Entry>, truncated: bool, token: Option<&str>) -> Option<Resume> {
    if !truncated {
        return None;
    }
    match (token, entries.back()) {
        (Some(token), _) => Some(Resume {
            continuation: Some(token.to_string()),
            ..Resume::default()
        }),
        (None, Some(last)) => Some(Resume {
            continuation: None,
            start_after: Some(last.key().to_string()),
            skip_folder: matches!(last, Entry::Folder(..)).then(|| last.key().to_string()),
        }),
        (None, None) => None,
    }
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

    #[test]
    fn resuming_after_a_folder_skips_it() {
        let page = VecDeque::from([object("p/a"), folder("p/b/")]);
        let next = resume_after(&page, true, None).expect("truncated");
        assert_eq!(next.start_after.as_deref(), Some("p/b/"));
        assert_eq!(next.skip_folder.as_deref(), Some("p/b/"));
        // The server lists p/b/ again (its keys sort after its name).
        let again = folders_of("p/", ["p/b/", "p/c/"].into_iter(), Some("p/b/")).unwrap();
        let keys: Vec<&str> = again.iter().map(Entry::key).collect();
        assert_eq!(keys, ["p/c/"]);

        let page = VecDeque::from([folder("p/b/"), object("p/c")]);
        let next = resume_after(&page, true, None).expect("truncated");
        assert_eq!(next.skip_folder, None);
        let next = resume_after(&page, true, Some("token")).expect("truncated");
        assert_eq!(next.continuation.as_deref(), Some("token"));
        assert!(resume_after(&page, false, Some("token")).is_none());
    }

    #[test]
    fn a_folder_outside_the_prefix_is_refused() {
        for bad in ["p/", "q/", "p"] {
            let Err(err) = folders_of("p/", [bad].into_iter(), None) else {
                panic!("{bad} was accepted");
            };
            assert!(err.contains("not inside it"), "{bad}: {err}");
        }
    }
}
