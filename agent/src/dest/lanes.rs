//! Data lanes on the destination: the schema file first, whose pre-data
//! section creates the tables; then one `pg_restore` per lane, fed through
//! a small queue by a writer task of its own; then the post-data section by
//! several workers. A lane whose `pg_restore` stops early is reported, and
//! the others are stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{Stream, StreamExt};
use stagesync_proto::SCHEMA_FILE;
use stagesync_proto::v1 as pb;
use tonic::Status;

use super::RestoreRun;
use super::inbound::{Event, Inbound};
use crate::args;
use crate::jobs::{Job, StepError, finish_tool};
use crate::procs;

/// Chunks queued for one lane's `pg_restore`.
const LANE_QUEUE: usize = 4;

/// One data lane on the destination.
struct LaneFeed {
    /// Dropped at the lane's end, which closes pg_restore's input.
    tx: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    /// True when everything sent was written and the input then closed.
    writer: tokio::task::JoinHandle<bool>,
    tool: procs::Tool,
}

fn lane_error(lane: usize, e: StepError) -> StepError {
    e.context(format_args!("data lane {lane}"))
}

impl RestoreRun<'_> {
    pub(super) async fn lanes<S>(
        &self,
        mut inbound: Inbound<S>,
        lanes: u32,
    ) -> Result<(), StepError>
    where
        S: Stream<Item = Result<pb::DumpFrame, Status>> + Unpin,
    {
        let schema = self.land_schema(&mut inbound).await?;
        self.restore_from(args::RestoreFrom::PreDataOf(&schema))
            .await
            .map_err(|e| e.context("creating the tables"))?;
        self.job.data_lanes.store(lanes, Ordering::Relaxed);
        tracing::info!(job = %self.job.id, lanes, "tables created; restoring the data in lanes");
        let mut feeds = Vec::with_capacity(lanes as usize);
        for _ in 0..lanes {
            match self.start_lane() {
                Ok(f) => feeds.push(f),
                Err(e) => {
                    stop_lanes(feeds).await;
                    return Err(e);
                }
            }
        }
        match self.route(&mut inbound, &mut feeds).await {
            Err(e) => {
                stop_lanes(feeds).await;
                return Err(e);
            }
            // A lane whose pg_restore stopped early says why; then the
            // others are of no use.
            Ok(Some(broken)) => {
                let mut feed = feeds.swap_remove(broken);
                stop_lanes(feeds).await;
                feed.tx = None;
                let complete = feed.writer.await.unwrap_or(false);
                let e = finish_tool(self.job, &mut feed.tool, complete, &self.job.new_database)
                    .await
                    .err()
                    .unwrap_or_else(|| {
                        StepError::new(pb::Step::PgRestore, "it stopped reading early")
                    });
                return Err(lane_error(broken, e));
            }
            Ok(None) => finish_lanes(self.job, feeds).await?,
        }
        self.post_data(&schema).await
    }

    /// Lands the stream's leading schema file.
    async fn land_schema<S>(&self, inbound: &mut Inbound<S>) -> Result<PathBuf, StepError>
    where
        S: Stream<Item = Result<pb::DumpFrame, Status>> + Unpin,
    {
        let dir = self.job.work_dir.clone().ok_or_else(|| {
            StepError::new(
                pb::Step::Stream,
                "no work directory to land the schema file in",
            )
        })?;
        match inbound.next().await? {
            Event::FileStart(f) if f.name == SCHEMA_FILE => {
                inbound.land(&dir, &f, self.schema_cap()).await?
            }
            other => {
                return Err(StepError::new(
                    pb::Step::Stream,
                    format!(
                        "a stream with data lanes must start with the file {SCHEMA_FILE}, not a {} frame",
                        other.kind()
                    ),
                ));
            }
        }
        match inbound.next().await? {
            Event::FileLanded(path) => Ok(path),
            other => Err(other.unexpected(&format!("inside the file {SCHEMA_FILE}"))),
        }
    }

    /// Routes each lane's bytes to its `pg_restore` until the trailer;
    /// `Some(lane)` when that lane's pg_restore stopped reading early.
    async fn route<S>(
        &self,
        inbound: &mut Inbound<S>,
        feeds: &mut [LaneFeed],
    ) -> Result<Option<usize>, StepError>
    where
        S: Stream<Item = Result<pb::DumpFrame, Status>> + Unpin,
    {
        loop {
            match inbound.next().await? {
                Event::Data { lane, raw } => {
                    let Some(tx) = feeds[lane].tx.as_ref() else {
                        return Err(StepError::new(
                            pb::Step::Stream,
                            format!("data arrived on lane {lane} after its end"),
                        ));
                    };
                    let taken = tokio::select! {
                        _ = self.job.cancel.cancelled() => {
                            return Err(StepError::cancelled(pb::Step::Stream));
                        }
                        r = tx.send(raw) => r,
                    };
                    if taken.is_err() {
                        return Ok(Some(lane));
                    }
                }
                // Verified (by the reader) before pg_restore sees the end
                // of its input.
                Event::LaneEnded(lane) => feeds[lane].tx = None,
                Event::End => {
                    feeds[0].tx = None;
                    return Ok(None);
                }
                other => return Err(other.unexpected("among the data lanes")),
            }
        }
    }

    /// Starts one lane's `pg_restore` and the task that writes into it.
    fn start_lane(&self) -> Result<LaneFeed, StepError> {
        let mut tool = self.restore_from_stdin()?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(LANE_QUEUE);
        let stdin = tool.take_stdin();
        let job = self.job.clone();
        let writer = tokio::spawn(async move {
            let Some(mut stdin) = stdin else {
                return false;
            };
            while let Some(raw) = rx.recv().await {
                if stdin.write(&raw).await.is_err() {
                    return false;
                }
                job.restored.fetch_add(raw.len() as u64, Ordering::Relaxed);
            }
            true
        });
        Ok(LaneFeed {
            tx: Some(tx),
            writer,
            tool,
        })
    }
}

/// Waits for every lane's writer and pg_restore at once; the first to fail
/// stops the others, and is the one reported.
async fn finish_lanes(job: &Arc<Job>, feeds: Vec<LaneFeed>) -> Result<(), StepError> {
    let stop = job.cancel.child_token();
    let mut running: futures::stream::FuturesUnordered<_> = feeds
        .into_iter()
        .enumerate()
        .map(|(lane, feed)| tokio::spawn(finish_lane(job.clone(), stop.clone(), lane, feed)))
        .collect();
    let mut failure: Option<StepError> = None;
    while let Some(done) = running.next().await {
        let (lane, result) = done.unwrap_or_else(|e| {
            stop.cancel();
            (
                0,
                Err(StepError::new(
                    pb::Step::PgRestore,
                    format!("a lane's task failed: {e}"),
                )),
            )
        });
        if let Err(e) = result {
            failure = Some(StepError::first_cause(failure, lane_error(lane, e)));
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Closes one lane's input (its digest was checked) and waits for its
/// writer and pg_restore, unless another lane fails first.
async fn finish_lane(
    job: Arc<Job>,
    stop: tokio_util::sync::CancellationToken,
    lane: usize,
    mut feed: LaneFeed,
) -> (usize, Result<(), StepError>) {
    drop(feed.tx.take());
    let done = async {
        let complete = (&mut feed.writer).await.unwrap_or(false);
        finish_tool(&job, &mut feed.tool, complete, &job.new_database).await
    };
    let result = tokio::select! {
        r = done => r,
        _ = stop.cancelled() => Err(StepError::stopped(pb::Step::PgRestore, "another data lane failed")),
    };
    if result.is_err() {
        // Its input closes with the kill, so the writer ends too.
        feed.tool.kill().await;
        feed.writer.abort();
        stop.cancel();
    }
    (lane, result)
}

/// Stops every lane's pg_restore and its writer.
async fn stop_lanes(feeds: Vec<LaneFeed>) {
    for mut f in feeds {
        f.tx = None;
        f.tool.kill().await;
        let _ = f.writer.await;
    }
}
