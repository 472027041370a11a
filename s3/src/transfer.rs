//! Moving one object: server-side copy inside one endpoint, or ranged GETs
//! into PUT/multipart uploads between endpoints. Bytes never touch disk;
//! every buffered body holds one memory slot, so at most `concurrency`
//! part-sized buffers exist at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{OnceCell, Semaphore};

use crate::error::{Classified, Kind, Side, classify};
use crate::head::{LeanAnswer, LeanHead};
use crate::listing::Listed;
use crate::plan::{Identity, META_MD5, META_SOURCE_ETAG, is_plain_md5, same_content};
use crate::progress::CopyMethod;
use crate::spec::{CopySpec, MAX_PARTS, encode_key};

/// Parts of one object in flight at once; the memory slots bound the total.
const PART_CONCURRENCY: usize = 8;

/// Everything needed to move objects for one copy.
pub(crate) struct Transfer {
    pub spec: Arc<CopySpec>,
    pub source: Client,
    pub dest: Client,
    /// One permit per part-sized buffer.
    pub slots: Arc<Semaphore>,
    /// Whether HEAD returns ETags, per side (source, dest).
    pub head_etags: [AtomicBool; 2],
    /// The lean HEAD path per side, learned on first use (None: SDK only).
    pub lean: [OnceCell<Option<LeanHead>>; 2],
    /// The credentials chain of each side's client, for the lean path.
    pub credentials: [Option<SharedCredentialsProvider>; 2],
}

fn sdk<E>(err: SdkError<E, HttpResponse>) -> Classified
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    classify(&err)
}

fn transient(detail: impl std::fmt::Display) -> Classified {
    Classified {
        kind: Kind::Transient,
        detail: detail.to_string(),
    }
}

/// The standard headers and user metadata that travel with an object.
#[derive(Clone, Debug, Default)]
struct Headers {
    content_type: Option<String>,
    cache_control: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    metadata: HashMap<String, String>,
}

macro_rules! headers_from {
    ($out:expr) => {
        Headers {
            content_type: $out.content_type().map(str::to_string),
            cache_control: $out.cache_control().map(str::to_string),
            content_encoding: $out.content_encoding().map(str::to_string),
            content_disposition: $out.content_disposition().map(str::to_string),
            content_language: $out.content_language().map(str::to_string),
            metadata: $out.metadata().cloned().unwrap_or_default(),
        }
    };
}

/// `$request` (a PUT, a copy or a multipart upload) with the headers and
/// metadata of `$h`.
macro_rules! with_headers {
    ($request:expr, $h:expr) => {{
        let h: Headers = $h;
        $request
            .set_content_type(h.content_type)
            .set_cache_control(h.cache_control)
            .set_content_encoding(h.content_encoding)
            .set_content_disposition(h.content_disposition)
            .set_content_language(h.content_language)
            .set_metadata(Some(h.metadata))
    }};
}

impl Headers {
    /// The source's metadata plus what stagesync records about its identity.
    fn tagged(mut self, source: &Identity) -> Self {
        self.metadata.remove(META_SOURCE_ETAG);
        self.metadata.remove(META_MD5);
        if let Some(etag) = &source.etag {
            self.metadata.insert(META_SOURCE_ETAG.into(), etag.clone());
        }
        if let Some(md5) = &source.md5 {
            self.metadata.insert(META_MD5.into(), md5.clone());
        }
        self
    }
}

/// ETags travel quoted in conditional headers; some servers insist.
fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

/// `x-amz-copy-source` is `bucket/key` with the key percent-encoded.
fn copy_source(bucket: &str, key: &str) -> String {
    format!("{bucket}/{}", encode_key(key))
}

/// One part of a multipart copy, as the part's request needs it.
struct Part {
    upload_id: String,
    number: i32,
    /// The first and last byte (inclusive).
    start: u64,
    end: u64,
    /// The source's ETag, quoted: the part is read only from that version.
    if_match: Option<String>,
}

impl Part {
    fn range(&self) -> String {
        format!("bytes={}-{}", self.start, self.end)
    }
}

/// Byte ranges (inclusive) of the parts of an object of `size` bytes.
pub(crate) fn part_ranges(size: u64, part_size: u64) -> Vec<(i32, u64, u64)> {
    let part = part_size.max(size.div_ceil(MAX_PARTS));
    (0..size.div_ceil(part))
        .map(|i| {
            let start = i * part;
            ((i + 1) as i32, start, (start + part).min(size) - 1)
        })
        .collect()
}

impl Transfer {
    fn source_key(&self, key: &str) -> String {
        format!("{}{key}", self.spec.source.prefix)
    }

    fn dest_key(&self, key: &str) -> String {
        format!("{}{key}", self.spec.dest.prefix)
    }

    /// A side's index in the per-side arrays, its client and its bucket.
    fn side(&self, side: Side) -> (usize, &Client, &str) {
        match side {
            Side::Source => (0, &self.source, &self.spec.source.bucket),
            Side::Dest => (1, &self.dest, &self.spec.dest.bucket),
        }
    }

    /// The identity and headers of one object. Some S3-compatible servers
    /// leave the ETag out of HEAD (and of listings) but send it with GET;
    /// once a side is seen doing that, one byte is fetched with GET instead.
    async fn head(
        &self,
        side: Side,
        key: &str,
        size: u64,
    ) -> Result<(Identity, Headers), Classified> {
        let (i, client, bucket) = self.side(side);
        let head_works = &self.head_etags[i];
        if head_works.load(Ordering::Relaxed) {
            let out = client
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(sdk)?;
            if out.e_tag().is_some() {
                return Ok((
                    Identity::new(out.e_tag(), out.metadata()),
                    headers_from!(out),
                ));
            }
            head_works.store(false, Ordering::Relaxed);
        }
        let range = (size > 0).then(|| "bytes=0-0".to_string());
        let got = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_range(range)
            .send()
            .await
            .map_err(sdk)?;
        let found = (
            Identity::new(got.e_tag(), got.metadata()),
            headers_from!(got),
        );
        got.body.collect().await.map_err(transient)?;
        Ok(found)
    }

    /// The identity of one object, for comparing: by a lean HEAD where
    /// that works, else through the SDK.
    async fn identity(&self, side: Side, key: &str, size: u64) -> Result<Identity, Classified> {
        let (i, client, bucket) = self.side(side);
        let lean = self.lean[i]
            .get_or_init(|| async {
                LeanHead::learn(client, self.credentials[i].clone()?, bucket).await
            })
            .await;
        if let Some(lean) = lean
            && let LeanAnswer::Found { etag, metadata } = lean.head(key).await
        {
            return Ok(Identity::new(Some(&etag), Some(&metadata)));
        }
        Ok(self.head(side, key, size).await?.0)
    }

    /// For same-size objects whose ETags do not compare: decide by the
    /// identities stagesync recorded. True when a copy is needed.
    pub(crate) async fn differs_by_metadata(
        &self,
        source: &Listed,
        dest: &Listed,
    ) -> Result<bool, Classified> {
        let source_key = self.source_key(&source.key);
        let dest_key = self.dest_key(&dest.key);
        let head_dest = self.identity(Side::Dest, &dest_key, dest.size);
        if source.etag.is_none() {
            // Some servers list no ETags at all: both heads are needed.
            let head_source = self.identity(Side::Source, &source_key, source.size);
            let (source_id, dest_id) = futures::try_join!(head_source, head_dest)?;
            return Ok(!same_content(&source_id, &dest_id));
        }
        let dest_id = head_dest.await?;
        if same_content(&Identity::new(source.etag.as_deref(), None), &dest_id) {
            return Ok(false);
        }
        // The source may itself be a stagesync copy carrying an MD5.
        let source_id = self
            .identity(Side::Source, &source_key, source.size)
            .await?;
        Ok(!same_content(&source_id, &dest_id))
    }

    /// Copies one object by the cheapest path available.
    pub(crate) async fn copy(&self, object: &Listed) -> Result<CopyMethod, Classified> {
        if self.spec.same_side() {
            if object.size > self.spec.multipart_threshold && object.size > 0 {
                self.server_multipart(object).await?;
                return Ok(CopyMethod::ServerSideMultipart);
            }
            match self.server_copy(object).await {
                Ok(()) => return Ok(CopyMethod::ServerSide),
                // The key was just listed, so "no such key" means the server
                // could not parse the copy source (seen with s3s-fs 0.12
                // and `?` in a key). Streaming the object needs no copy source; if the
                // object is really gone, its GET fails the same way.
                Err(e) if e.kind == Kind::NotFound => {
                    tracing::debug!(key = %object.key, error = %e, "server-side copy found no source, streaming instead");
                }
                Err(e) => return Err(e),
            }
        }
        if object.size <= self.spec.part_size {
            self.streamed(object).await?;
            return Ok(CopyMethod::Streamed);
        }
        self.streamed_multipart(object).await?;
        Ok(CopyMethod::StreamedMultipart)
    }

    async fn server_copy(&self, object: &Listed) -> Result<(), Classified> {
        let source_key = self.source_key(&object.key);
        let request = self
            .dest
            .copy_object()
            .bucket(&self.spec.dest.bucket)
            .key(self.dest_key(&object.key))
            .copy_source(copy_source(&self.spec.source.bucket, &source_key))
            .set_copy_source_if_match(object.etag.as_deref().map(quoted));
        // A plain (or unlisted) ETag is the content MD5, which the copy
        // keeps: copy every header as is and compare ETags next time. Only
        // multipart or encrypted sources need their identity recorded.
        let plain = object.etag.as_deref().is_none_or(is_plain_md5);
        let request = if plain {
            request.metadata_directive(MetadataDirective::Copy)
        } else {
            let (identity, headers) = self.head(Side::Source, &source_key, object.size).await?;
            let request = request.metadata_directive(MetadataDirective::Replace);
            with_headers!(request, headers.tagged(&identity))
        };
        request.send().await.map_err(sdk)?;
        Ok(())
    }

    async fn server_multipart(&self, object: &Listed) -> Result<(), Classified> {
        let source = copy_source(&self.spec.source.bucket, &self.source_key(&object.key));
        self.multipart(object, |p| {
            let source = source.clone();
            async move {
                let out = self
                    .dest
                    .upload_part_copy()
                    .bucket(&self.spec.dest.bucket)
                    .key(self.dest_key(&object.key))
                    .copy_source(source)
                    .copy_source_range(p.range())
                    .set_copy_source_if_match(p.if_match)
                    .part_number(p.number)
                    .upload_id(p.upload_id)
                    .send()
                    .await
                    .map_err(sdk)?;
                Ok(out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .map(str::to_string))
            }
        })
        .await
    }

    async fn streamed(&self, object: &Listed) -> Result<(), Classified> {
        let _slot = self.slots.acquire().await.map_err(transient)?;
        let got = self
            .source
            .get_object()
            .bucket(&self.spec.source.bucket)
            .key(self.source_key(&object.key))
            .set_if_match(object.etag.as_deref().map(quoted))
            .send()
            .await
            .map_err(sdk)?;
        let identity = Identity::new(got.e_tag(), got.metadata());
        let h = headers_from!(got).tagged(&identity);
        let body = got.body.collect().await.map_err(transient)?.into_bytes();
        let put = self
            .dest
            .put_object()
            .bucket(&self.spec.dest.bucket)
            .key(self.dest_key(&object.key))
            .content_length(body.len() as i64)
            .body(ByteStream::from(body));
        with_headers!(put, h).send().await.map_err(sdk)?;
        Ok(())
    }

    async fn streamed_multipart(&self, object: &Listed) -> Result<(), Classified> {
        let source_key = self.source_key(&object.key);
        self.multipart(object, |p| {
            let source_key = source_key.clone();
            async move {
                let _slot = self.slots.acquire().await.map_err(transient)?;
                let got = self
                    .source
                    .get_object()
                    .bucket(&self.spec.source.bucket)
                    .key(source_key)
                    .range(p.range())
                    .set_if_match(p.if_match)
                    .send()
                    .await
                    .map_err(sdk)?;
                let body = got.body.collect().await.map_err(transient)?.into_bytes();
                let out = self
                    .dest
                    .upload_part()
                    .bucket(&self.spec.dest.bucket)
                    .key(self.dest_key(&object.key))
                    .part_number(p.number)
                    .upload_id(p.upload_id)
                    .content_length(body.len() as i64)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(sdk)?;
                Ok(out.e_tag().map(str::to_string))
            }
        })
        .await
    }

    /// Copies `object` as a multipart upload: its identity and headers read
    /// from the source first, then `part` run for every range (each only
    /// if the source still has that identity), the upload completed, and
    /// aborted on any failure so no orphaned parts are billed.
    async fn multipart<F, Fut>(&self, object: &Listed, part: F) -> Result<(), Classified>
    where
        F: Fn(Part) -> Fut,
        Fut: Future<Output = Result<Option<String>, Classified>>,
    {
        let source_key = self.source_key(&object.key);
        let (identity, headers) = self.head(Side::Source, &source_key, object.size).await?;
        let if_match = identity.etag.as_deref().map(quoted);
        let key = self.dest_key(&object.key);
        let upload_id = self.create_upload(&key, headers.tagged(&identity)).await?;
        let parts = futures::stream::iter(part_ranges(object.size, self.spec.part_size))
            .map(|(number, start, end)| {
                let done = part(Part {
                    upload_id: upload_id.clone(),
                    number,
                    start,
                    end,
                    if_match: if_match.clone(),
                });
                async move {
                    let etag = done.await?;
                    Ok::<_, Classified>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(etag)
                            .build(),
                    )
                }
            })
            .buffered(PART_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await;
        let completed = match parts {
            Ok(parts) => self.complete(&key, &upload_id, parts, object.size).await,
            Err(e) => Err(e),
        };
        if completed.is_err() {
            self.abort(&key, &upload_id).await;
        }
        completed
    }

    /// Starts a multipart upload of `key` with the object's headers;
    /// returns its upload id.
    async fn create_upload(&self, key: &str, h: Headers) -> Result<String, Classified> {
        let create = self
            .dest
            .create_multipart_upload()
            .bucket(&self.spec.dest.bucket)
            .key(key);
        let created = with_headers!(create, h).send().await.map_err(sdk)?;
        Ok(created
            .upload_id()
            .ok_or_else(|| transient("CreateMultipartUpload returned no upload id"))?
            .to_string())
    }

    /// Completes a multipart upload of `size` bytes from its parts.
    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        size: u64,
    ) -> Result<(), Classified> {
        let bucket = &self.spec.dest.bucket;
        let done = self
            .dest
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match done {
            Ok(_) => Ok(()),
            Err(e) if unparsed_success(&e) => self.confirm_complete(bucket, key, size).await,
            Err(e) => Err(sdk(e)),
        }
    }

    /// Aborts a failed multipart upload; a failure to abort is only logged,
    /// as the copy has failed already.
    async fn abort(&self, key: &str, upload_id: &str) {
        let bucket = &self.spec.dest.bucket;
        let aborted = self
            .dest
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(abort) = aborted {
            tracing::warn!(bucket, key, upload_id, error = %classify(&abort), "could not abort multipart upload");
        }
    }

    /// A completion the SDK could not parse: confirm the object is there
    /// with the right size rather than trust or distrust the body.
    async fn confirm_complete(&self, bucket: &str, key: &str, size: u64) -> Result<(), Classified> {
        let out = self
            .dest
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(sdk)?;
        if out.content_length() == Some(size as i64) {
            return Ok(());
        }
        Err(transient(format!(
            "multipart upload of `{key}` completed with an unreadable answer and the object is not there"
        )))
    }
}

/// moto answers CompleteMultipartUpload with a root element the SDK does not
/// expect. S3 reports a failed completion as a 200 with an `<Error>` body,
/// which the SDK parses into a code; a 200 without a code is a success the
/// SDK could not read.
fn unparsed_success<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::ServiceError(service) => {
            service.raw().status().as_u16() == 200 && service.err().code().is_none()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_copy_source() {
        assert_eq!(
            copy_source("bkt", "a b/ü+%?.txt"),
            "bkt/a%20b/%C3%BC%2B%25%3F.txt"
        );
    }

    #[test]
    fn splits_parts() {
        assert_eq!(part_ranges(10, 4), vec![(1, 0, 3), (2, 4, 7), (3, 8, 9)]);
        assert_eq!(part_ranges(8, 4), vec![(1, 0, 3), (2, 4, 7)]);
        assert!(part_ranges(0, 4).is_empty());
        // Never more than 10,000 parts: the part size grows instead.
        let big = part_ranges(100_000 * 4, 4);
        assert_eq!(big.len(), 10_000);
        assert_eq!(big.last().map(|p| p.2), Some(100_000 * 4 - 1));
    }
}
