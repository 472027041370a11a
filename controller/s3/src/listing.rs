//! Listing one side page by page into a bounded channel, so a listing never
//! holds more than a couple of pages no matter how big the bucket is.

use aws_sdk_s3::Client;
use tokio::sync::mpsc;

use crate::error::{SyncError, Target, classify, side_error};
use crate::progress::{Event, Progress};
use crate::spec::{Filter, S3Location};

/// S3 returns at most 1,000 keys a page; two pages of slack lets the
/// listing run ahead of the merge without growing.
const CHANNEL_DEPTH: usize = 2_000;

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
    target: Target,
    progress: Progress,
) -> Listing {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    tokio::spawn(async move {
        if let Err(err) = list(&client, &location, &filter, &target, &progress, &tx).await {
            let _ = tx.send(Err(err)).await;
        }
    });
    rx
}

async fn list(
    client: &Client,
    location: &S3Location,
    filter: &Filter,
    target: &Target,
    progress: &Progress,
    tx: &mpsc::Sender<Result<Listed, SyncError>>,
) -> Result<(), SyncError> {
    let mut continuation: Option<String> = None;
    let mut start_after: Option<String> = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(&location.bucket)
            .prefix(&location.prefix)
            .set_continuation_token(continuation.take())
            .set_start_after(start_after.take())
            .send()
            .await
            .map_err(|e| side_error(target.clone(), "ListObjectsV2", classify(&e)))?;

        let mut last_key = None;
        let (mut objects, mut bytes) = (0, 0);
        for object in page.contents() {
            let Some(key) = object.key() else { continue };
            last_key = Some(key.to_string());
            let Some(relative) = key.strip_prefix(location.prefix.as_str()) else {
                continue;
            };
            // A "folder" marker equal to the prefix has no name of its own.
            if relative.is_empty() || !filter.accepts(relative) {
                continue;
            }
            let size = object.size().unwrap_or(0).max(0) as u64;
            objects += 1;
            bytes += size;
            let listed = Listed {
                key: relative.to_string(),
                size,
                etag: object.e_tag().map(|t| t.trim_matches('"').to_string()),
            };
            if tx.send(Ok(listed)).await.is_err() {
                return Ok(()); // the merge stopped; nobody is listening
            }
        }
        progress(Event::Listed {
            side: target.side,
            objects,
            bytes,
        });

        if !page.is_truncated().unwrap_or(false) {
            return Ok(());
        }
        // Some S3-compatible servers mark a page truncated without a
        // continuation token; resuming after the last key works everywhere.
        match (page.next_continuation_token(), last_key) {
            (Some(token), _) => continuation = Some(token.to_string()),
            (None, Some(last)) => start_after = Some(last),
            (None, None) => return Ok(()),
        }
    }
}
