//! Data lanes on the destination: the schema file first, whose pre-data
//! section creates the tables; then the lanes at once, each fed through a
//! small queue to a task of its own: lane 0 to a `pg_restore` of the rest
//! of the data, lanes 1 and up to copy lanes (`copy.rs`), each table's
//! indexes and keys built as soon as it landed; then the rest of the
//! post-data section by several workers. A lane that stops early is
//! reported, and the others are stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{Stream, StreamExt};
use stagesync_proto::SCHEMA_FILE;
use stagesync_proto::v1 as pb;
use tokio::sync::{Semaphore, mpsc};
use tonic::Status;

use super::RestoreRun;
use super::copy::{CopyLane, LaneInput, LaneTables};
use super::inbound::{Event, Inbound};
use super::post_data::{self, Plan};
use crate::args;
use crate::jobs::{Job, StepError, finish_tool};

/// Inputs queued for one lane.
const LANE_QUEUE: usize = 4;

/// One data lane on the destination.
struct LaneFeed {
    /// Dropped at the lane's end, which ends its input.
    tx: Option<mpsc::Sender<LaneInput>>,
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
        inbound.expect_tables(tables);
        let schema = self.land_schema(&mut inbound).await?;
        self.restore_from(args::RestoreFrom::PreDataOf(&schema))
            .await
            .map_err(|e| e.context("creating the tables"))?;
        self.job.data_lanes.store(lanes, Ordering::Relaxed);
        let plan = self.post_data_plan(&schema, tables).await;
        tracing::info!(job = %self.job.id, lanes, tables = tables.len(), early = plan.early_items(), later = plan.rest.len(), "tables created; copying the data in lanes");
        // Copied slices and index builds share `jobs` slots (never fewer
        // than copy lanes): each slice takes a free one while it copies
        // (never waiting: the lanes share one incoming stream), each build
        // waits for one and holds it while it runs.
        let total = self.setup.jobs.max(lanes - 1);
        let slots = Arc::new(Semaphore::new(total as usize));
        let (landed_tx, landed) = mpsc::unbounded_channel();
        let shared = Arc::new(LaneTables::new(tables.to_vec()));
        let mut feeds = Vec::with_capacity(lanes as usize);
        feeds.push(self.start_restore_lane(landed_tx.clone()).await?);
        for lane in 1..lanes {
            feeds.push(self.start_copy_lane(
                lane,
                shared.clone(),
                slots.clone(),
                landed_tx.clone(),
            ));
        }
        drop(landed_tx);
        let copying = std::time::Instant::now();
        let stop = self.job.cancel.child_token();
        let (data, built) = tokio::join!(
            async {
                let r = self.data_in_lanes(&mut inbound, feeds).await;
                if r.is_err() {
                    stop.cancel();
                }
                r
            },
            self.build_as_lanes_land(&schema, &plan, landed, (slots, total), stop.clone())
        );
        data?;
        built?;
        let ms = |since: std::time::Instant| since.elapsed().as_millis() as u64;
        self.job.copy_ms.store(ms(copying), Ordering::Relaxed);
        let rest = std::time::Instant::now();
        self.post_data_rest(&schema, &plan).await?;
        self.job.rest_ms.store(ms(rest), Ordering::Relaxed);
        Ok(())
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
    async fn post_data_plan(&self, schema: &Path, tables: &[pb::LaneTable]) -> Plan {
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
                post_data::plan(&String::from_utf8_lossy(&out.stdout), tables)
            }
            other => {
                tracing::warn!(job = %self.job.id, result = ?other.map(|o| o.status), "cannot list the post-data items; all are built after the data");
                Plan::default()
            }
        }
    }

    /// Builds each table's indexes and keys as soon as it landed (lane 0's
    /// tables once lane 0 is in), one item per build, each in a free slot;
    /// returns once every lane ended and every build ended.
    async fn build_as_lanes_land(
        &self,
        schema: &Path,
        plan: &Plan,
        mut landed: mpsc::UnboundedReceiver<usize>,
        slots: (Arc<Semaphore>, u32),
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<(), StepError> {
        let mut builds = futures::stream::FuturesUnordered::new();
        let mut open = true;
        while open || !builds.is_empty() {
            tokio::select! {
                unit = landed.recv(), if open => match unit {
                    Some(unit) => {
                        for (i, item) in plan.early.get(unit).into_iter().flatten().enumerate() {
                            builds.push(self.build_one(schema, item, (unit, i), slots.clone()));
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

    /// One post-data item (the `i`th of the plan's `unit`, what landed),
    /// built in a slot of its own. It shares the cores with whatever holds
    /// the other slots now: alone (the last table's keys, typically), its
    /// `CREATE INDEX` gets parallel workers.
    async fn build_one(
        &self,
        schema: &Path,
        item: &str,
        (unit, i): (usize, usize),
        (slots, total): (Arc<Semaphore>, u32),
    ) -> Result<(), StepError> {
        let _slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StepError::cancelled(pb::Step::PgRestore))?;
        let busy = total
            .saturating_sub(slots.available_permits() as u32)
            .max(1);
        let dir = self.job.work_dir.clone().unwrap_or_default();
        let list = dir.join(format!("post-data-{unit}-{i}.list"));
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
            alongside: busy,
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

    /// Routes each lane's input to it until the trailer; `Some(lane)` when
    /// that lane stopped taking it early.
    async fn route<S>(
        &self,
        inbound: &mut Inbound<S>,
        feeds: &mut [LaneFeed],
    ) -> Result<Option<usize>, StepError>
    where
        S: Stream<Item = Result<pb::DumpFrame, Status>> + Unpin,
    {
        loop {
            let (lane, input) = match inbound.next().await? {
                Event::Data { lane, raw } => (lane, LaneInput::Data(raw)),
                Event::TableStart { lane, table, slice } => {
                    (lane, LaneInput::Start { table, slice })
                }
                // Checked (by the reader) before the lane commits the rows.
                Event::TableEnded { lane, rows } => (lane, LaneInput::End { rows }),
                // Verified (by the reader) before the lane sees the end of
                // its input. Lane 0's end comes before the trailer, so its
                // tables are in (and their indexes built) while others
                // still copy.
                Event::LaneEnded(lane) => {
                    feeds[lane].tx = None;
                    continue;
                }
                Event::End => {
                    feeds[0].tx = None;
                    return Ok(None);
                }
                other => return Err(other.unexpected("among the data lanes")),
            };
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
                r = tx.send(input) => r,
            };
            if taken.is_err() {
                return Ok(Some(lane));
            }
        }
    }

    /// Lane 0: a `pg_restore` of the data the copy lanes do not carry,
    /// and the task that writes into it and waits for it; once it is in,
    /// `landed` hears 0.
    async fn start_restore_lane(
        &self,
        landed: mpsc::UnboundedSender<usize>,
    ) -> Result<LaneFeed, StepError> {
        let mut tool = self.restore_from_stdin().await?;
        let (tx, mut rx) = mpsc::channel::<LaneInput>(LANE_QUEUE);
        let stdin = tool.take_stdin();
        let job = self.job.clone();
        let task = tokio::spawn(async move {
            let mut complete = stdin.is_some();
            if let Some(mut stdin) = stdin {
                while let Some(input) = rx.recv().await {
                    let LaneInput::Data(raw) = input else {
                        complete = false;
                        break;
                    };
                    if stdin.write(&raw).await.is_err() {
                        complete = false;
                        break;
                    }
                    job.restored.fetch_add(raw.len() as u64, Ordering::Relaxed);
                }
            }
            finish_tool(&job, &mut tool, complete, &job.new_database).await?;
            let _ = landed.send(0);
            Ok(())
        });
        Ok(LaneFeed { tx: Some(tx), task })
    }

    /// A copy lane, run by a task of its own.
    fn start_copy_lane(
        &self,
        lane: u32,
        tables: Arc<LaneTables>,
        slots: Arc<Semaphore>,
        landed: mpsc::UnboundedSender<usize>,
    ) -> LaneFeed {
        let (tx, rx) = mpsc::channel::<LaneInput>(LANE_QUEUE);
        let lane = CopyLane {
            job: self.job.clone(),
            lane,
            pg: self.config.postgres.clone(),
            login: self.setup.login.clone(),
            tables,
            slots,
            landed,
        };
        LaneFeed {
            tx: Some(tx),
            task: tokio::spawn(lane.run(rx)),
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
