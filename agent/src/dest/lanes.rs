//! Data lanes on the destination: the schema file first, whose pre-data
//! section creates the tables; then the lanes at once, each fed through a
//! small queue to a task of its own: lane 0 to a `pg_restore` of the rest
//! of the data, lanes 1 and up each to one table's `COPY … FROM STDIN`
//! (`copy.rs`); then the post-data section by several workers. A lane that
//! stops early is reported, and the others are stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{Stream, StreamExt};
use stagesync_proto::SCHEMA_FILE;
use stagesync_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::RestoreRun;
use super::copy::CopyIn;
use super::inbound::{Event, Inbound};
use crate::args;
use crate::jobs::{Job, StepError, finish_tool};

/// Chunks queued for one lane.
const LANE_QUEUE: usize = 4;

/// One data lane on the destination.
struct LaneFeed {
    /// Dropped at the lane's end, which ends its input.
    tx: Option<mpsc::Sender<bytes::Bytes>>,
    /// Writes the lane's input and says how it ended.
    task: tokio::task::JoinHandle<Result<(), StepError>>,
}

fn lane_error(lane: usize, e: StepError) -> StepError {
    e.context(format_args!("data lane {lane}"))
}

impl RestoreRun<'_> {
    pub(super) async fn lanes<S>(
        &self,
        mut inbound: Inbound<S>,
        lanes: u32,
        tables: &[pb::LaneTable],
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
        feeds.push(self.start_restore_lane()?);
        for table in tables {
            feeds.push(self.start_copy_lane(table.clone()));
        }
        match self.route(&mut inbound, &mut feeds).await {
            Err(e) => {
                stop_lanes(feeds).await;
                return Err(e);
            }
            // A lane that stopped taking its input early says why; then
            // the others are of no use.
            Ok(Some(broken)) => {
                let mut feed = feeds.swap_remove(broken);
                stop_lanes(feeds).await;
                feed.tx = None;
                let e = match (&mut feed.task).await {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => StepError::new(pb::Step::PgRestore, "it stopped reading early"),
                    Err(e) => StepError::new(pb::Step::PgRestore, format!("its task failed: {e}")),
                };
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

    /// Lane 0: a `pg_restore` of the data the other lanes do not carry,
    /// and the task that writes into it and waits for it.
    fn start_restore_lane(&self) -> Result<LaneFeed, StepError> {
        let mut tool = self.restore_from_stdin()?;
        let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(LANE_QUEUE);
        let stdin = tool.take_stdin();
        let job = self.job.clone();
        let task = tokio::spawn(async move {
            let mut complete = stdin.is_some();
            if let Some(mut stdin) = stdin {
                while let Some(raw) = rx.recv().await {
                    if stdin.write(&raw).await.is_err() {
                        complete = false;
                        break;
                    }
                    job.restored.fetch_add(raw.len() as u64, Ordering::Relaxed);
                }
            }
            finish_tool(&job, &mut tool, complete, &job.new_database).await
        });
        Ok(LaneFeed { tx: Some(tx), task })
    }

    /// A lane of one table's rows, copied in by a task of its own.
    fn start_copy_lane(&self, table: pb::LaneTable) -> LaneFeed {
        let (tx, rx) = mpsc::channel::<bytes::Bytes>(LANE_QUEUE);
        let copy = CopyIn {
            job: self.job.clone(),
            pg: self.config.postgres.clone(),
            login: self.setup.login.clone(),
            table,
        };
        LaneFeed {
            tx: Some(tx),
            task: tokio::spawn(copy.run(rx)),
        }
    }
}

/// Waits for every lane at once; the first to fail stops the others, and
/// is the one reported.
async fn finish_lanes(job: &Arc<Job>, feeds: Vec<LaneFeed>) -> Result<(), StepError> {
    let stop = job.cancel.child_token();
    let mut running: futures::stream::FuturesUnordered<_> = feeds
        .into_iter()
        .enumerate()
        .map(|(lane, feed)| finish_lane(stop.clone(), lane, feed))
        .collect();
    let mut failure: Option<StepError> = None;
    while let Some((lane, result)) = running.next().await {
        if let Err(e) = result {
            failure = Some(StepError::first_cause(failure, lane_error(lane, e)));
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Ends one lane's input (its digest was checked) and waits for its task,
/// unless another lane fails first.
async fn finish_lane(
    stop: tokio_util::sync::CancellationToken,
    lane: usize,
    mut feed: LaneFeed,
) -> (usize, Result<(), StepError>) {
    drop(feed.tx.take());
    let result = tokio::select! {
        r = &mut feed.task => r.unwrap_or_else(|e| {
            Err(StepError::new(pb::Step::PgRestore, format!("a lane's task failed: {e}")))
        }),
        _ = stop.cancelled() => Err(StepError::stopped(pb::Step::PgRestore, "another data lane failed")),
    };
    if result.is_err() {
        // Its pg_restore is killed, or its session closed, with the task.
        feed.task.abort();
        let _ = feed.task.await;
        stop.cancel();
    }
    (lane, result)
}

/// Stops every lane.
async fn stop_lanes(feeds: Vec<LaneFeed>) {
    for mut f in feeds {
        f.tx = None;
        f.task.abort();
        let _ = f.task.await;
    }
}
