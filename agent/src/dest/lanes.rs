//! Data lanes on the destination: the schema file first, whose pre-data
//! section creates the tables; then the lanes at once, each fed through a
//! small queue to a task of its own: lane 0 to a `pg_restore` of the rest
//! of the data, lanes 1 and up each to one table's `COPY … FROM STDIN`
//! (`copy.rs`); then the post-data section by several workers. A lane that
//! stops early is reported, and the others are stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{Stream, StreamExt};
use stagesync_proto::SCHEMA_FILE;
use stagesync_proto::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::Status;

use super::RestoreRun;
use super::copy::CopyIn;
use super::inbound::{Event, Inbound};
use super::post_data::{self, Plan};
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

/// Where lanes say they are in, and the slots they hold until then.
struct Landed {
    tx: mpsc::UnboundedSender<usize>,
    slots: Arc<Semaphore>,
}

impl Landed {
    fn for_lane(&self, lane: usize) -> LaneLanded {
        LaneLanded {
            lane,
            tx: self.tx.clone(),
            // There are never more lanes than slots.
            slot: self.slots.clone().try_acquire_owned().ok(),
        }
    }
}

/// One lane's part of [`Landed`].
struct LaneLanded {
    lane: usize,
    tx: mpsc::UnboundedSender<usize>,
    slot: Option<OwnedSemaphorePermit>,
}

impl LaneLanded {
    /// Runs the lane's work; when it succeeded, frees its slot and says so.
    async fn after(
        self,
        work: impl std::future::Future<Output = Result<(), StepError>>,
    ) -> Result<(), StepError> {
        let r = work.await;
        drop(self.slot);
        if r.is_ok() {
            let _ = self.tx.send(self.lane);
        }
        r
    }
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
        let plan = self.post_data_plan(&schema, lanes as usize, tables).await;
        tracing::info!(job = %self.job.id, lanes, early = plan.early_items(), later = plan.rest.len(), "tables created; restoring the data in lanes");
        // Copying lanes and index builds share `jobs` slots: each lane holds
        // one until it is in, each build one while it runs.
        let slots = Arc::new(Semaphore::new(self.setup.jobs.max(lanes) as usize));
        let (landed_tx, landed) = mpsc::unbounded_channel();
        let landing = Landed {
            tx: landed_tx,
            slots: slots.clone(),
        };
        let mut feeds = Vec::with_capacity(lanes as usize);
        feeds.push(self.start_restore_lane(landing.for_lane(0))?);
        for table in tables {
            feeds.push(self.start_copy_lane(table.clone(), landing.for_lane(table.lane as usize)));
        }
        drop(landing);
        let stop = self.job.cancel.child_token();
        let (data, built) = tokio::join!(
            async {
                let r = self.data_in_lanes(&mut inbound, feeds).await;
                if r.is_err() {
                    stop.cancel();
                }
                r
            },
            self.build_as_lanes_land(&schema, &plan, landed, slots, stop.clone())
        );
        data?;
        built?;
        self.post_data_rest(&schema, &plan).await
    }

    /// Routes the lanes' data to them and waits until every lane is in.
    async fn data_in_lanes<S>(
        &self,
        inbound: &mut Inbound<S>,
        mut feeds: Vec<LaneFeed>,
    ) -> Result<(), StepError>
    where
        S: Stream<Item = Result<pb::DumpFrame, Status>> + Unpin,
    {
        match self.route(inbound, &mut feeds).await {
            Err(e) => {
                stop_lanes(feeds).await;
                Err(e)
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
                Err(lane_error(broken, e))
            }
            Ok(None) => finish_lanes(self.job, feeds).await,
        }
    }

    /// The schema file's post-data items by when they can be built; all
    /// of them for the final pass when they cannot be listed.
    async fn post_data_plan(&self, schema: &Path, lanes: usize, tables: &[pb::LaneTable]) -> Plan {
        let tool = self.config.postgres.bin_dir.join("pg_restore");
        let listed = tokio::process::Command::new(&tool)
            .args(["--list", "--section=post-data"])
            .arg(schema)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        match listed {
            Ok(out) if out.status.success() => {
                post_data::plan(&String::from_utf8_lossy(&out.stdout), lanes, tables)
            }
            other => {
                tracing::warn!(job = %self.job.id, result = ?other.map(|o| o.status), "cannot list the post-data items; all are built after the data");
                Plan::default()
            }
        }
    }

    /// Builds each lane's tables' indexes and keys as soon as the lane is
    /// in, one item per build, each in a free slot; returns once every
    /// lane said it is in (or failed) and every build ended.
    async fn build_as_lanes_land(
        &self,
        schema: &Path,
        plan: &Plan,
        mut landed: mpsc::UnboundedReceiver<usize>,
        slots: Arc<Semaphore>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<(), StepError> {
        let mut builds = futures::stream::FuturesUnordered::new();
        let mut open = true;
        while open || !builds.is_empty() {
            tokio::select! {
                lane = landed.recv(), if open => match lane {
                    Some(lane) => {
                        for (i, item) in plan.early.get(lane).into_iter().flatten().enumerate() {
                            builds.push(self.build_one(schema, item, lane, i, slots.clone()));
                        }
                    }
                    None => open = false,
                },
                Some(built) = builds.next(), if !builds.is_empty() => built?,
                _ = stop.cancelled() => {
                    return Err(StepError::stopped(pb::Step::PgRestore, "the data did not arrive whole"));
                }
            }
        }
        Ok(())
    }

    /// One post-data item, built in a slot of its own.
    async fn build_one(
        &self,
        schema: &Path,
        item: &str,
        lane: usize,
        i: usize,
        slots: Arc<Semaphore>,
    ) -> Result<(), StepError> {
        let _slot = slots
            .acquire_owned()
            .await
            .map_err(|_| StepError::cancelled(pb::Step::PgRestore))?;
        let dir = self.job.work_dir.clone().unwrap_or_default();
        let list = dir.join(format!("post-data-{lane}-{i}.list"));
        tokio::fs::write(&list, format!("{item}\n"))
            .await
            .map_err(|e| {
                StepError::new(
                    pb::Step::PgRestore,
                    format!("writing {}: {e}", list.display()),
                )
            })?;
        let what = item.split_once("; ").map_or(item, |(_, rest)| rest);
        self.restore_from(args::RestoreFrom::PostDataListed {
            file: schema,
            list: &list,
            jobs: 1,
            alongside: self.setup.jobs,
        })
        .await
        .map_err(|e| e.context(format_args!("building {what} as its table landed")))?;
        self.job.indexes_built.fetch_add(1, Ordering::Relaxed);
        let _ = tokio::fs::remove_file(&list).await;
        Ok(())
    }

    /// The post-data items not built yet (all of them when none could be
    /// placed), by `jobs` workers in pg_restore's dependency order.
    async fn post_data_rest(&self, schema: &Path, plan: &Plan) -> Result<(), StepError> {
        if plan.early_items() == 0 {
            return self.post_data(schema).await;
        }
        let dir = self.job.work_dir.clone().unwrap_or_default();
        let list = dir.join("post-data-rest.list");
        let text: String = plan.rest.iter().map(|l| format!("{l}\n")).collect();
        tokio::fs::write(&list, text).await.map_err(|e| {
            StepError::new(
                pb::Step::PgRestore,
                format!("writing {}: {e}", list.display()),
            )
        })?;
        self.post_data_listed(schema, &list).await
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
                // Lane 0's end comes before the trailer, so its tables
                // are in (and their indexes built) while others still copy.
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
    fn start_restore_lane(&self, landed: LaneLanded) -> Result<LaneFeed, StepError> {
        let mut tool = self.restore_from_stdin()?;
        let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(LANE_QUEUE);
        let stdin = tool.take_stdin();
        let job = self.job.clone();
        let task = tokio::spawn(landed.after(async move {
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
        }));
        Ok(LaneFeed { tx: Some(tx), task })
    }

    /// A lane of one table's rows, copied in by a task of its own.
    fn start_copy_lane(&self, table: pb::LaneTable, landed: LaneLanded) -> LaneFeed {
        let (tx, rx) = mpsc::channel::<bytes::Bytes>(LANE_QUEUE);
        let copy = CopyIn {
            job: self.job.clone(),
            pg: self.config.postgres.clone(),
            login: self.setup.login.clone(),
            table,
        };
        LaneFeed {
            tx: Some(tx),
            task: tokio::spawn(landed.after(copy.run(rx))),
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
