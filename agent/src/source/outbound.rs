//! The frames a source sends: a small bounded queue into the gRPC stream,
//! so a destination that stops reading slows the dump (backpressure end to
//! end, memory flat), and the helpers that turn a tool's output or a file
//! into data frames.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use stagesync_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::frames::{CHUNK, Encoder, frame, read_chunk};
use crate::jobs::{Job, StepError};
use crate::procs;

/// Frames buffered between pg_dump and the network.
pub const QUEUE: usize = 4;

/// How often the source says it is alive when it has nothing else to send.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// The sending end of one job's stream; clones share the stream.
#[derive(Clone)]
pub struct Outbound {
    job: Arc<Job>,
    tx: mpsc::Sender<pb::DumpFrame>,
}

/// Where [`Outbound::send_reader`] takes its chunks from.
pub enum Chunked<'a> {
    /// A tool's stdout.
    Tool(&'a mut procs::Chunks),
    /// A file of a dump landed in the work directory.
    File(&'a mut tokio::fs::File),
    /// A table's COPY output (a data lane).
    Copy(&'a mut super::copy::CopySession),
}

impl Chunked<'_> {
    /// Whether a chunk shorter than `CHUNK` is the last: a tool's output
    /// and a file fill every chunk until their end; a COPY's runs end at
    /// a read's end and say the COPY is over with an empty one.
    fn short_means_end(&self) -> bool {
        !matches!(self, Chunked::Copy(_))
    }

    /// While the stream is full, a COPY's socket is not watched: its
    /// server's writes would wake the agent for nothing.
    fn park(&mut self) {
        if let Chunked::Copy(c) = self {
            c.park();
        }
    }

    async fn next(&mut self) -> std::io::Result<bytes::Bytes> {
        match self {
            Chunked::Tool(c) => c.next().await,
            Chunked::File(f) => read_chunk(f).await,
            Chunked::Copy(c) => c.next().await,
        }
    }
}

impl Outbound {
    pub fn new(job: Arc<Job>, tx: mpsc::Sender<pb::DumpFrame>) -> Self {
        Outbound { job, tx }
    }

    /// Sends one frame, unless the job is cancelled first.
    pub async fn send(&self, f: pb::DumpFrame) -> Result<(), StepError> {
        tokio::select! {
            _ = self.job.cancel.cancelled() => Err(StepError::cancelled(pb::Step::Stream)),
            r = self.tx.send(f) => r.map_err(|_| {
                StepError::new(pb::Step::Stream, "the destination agent closed the stream")
            }),
        }
    }

    /// Sends heartbeats until the returned task is aborted or the stream
    /// closes, so the destination can tell a quiet stream from a dead one.
    pub fn heartbeats(&self) -> tokio::task::JoinHandle<()> {
        let (tx, job) = (self.tx.clone(), self.job.id.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.tick().await;
            loop {
                tick.tick().await;
                let beat = frame(pb::dump_frame::Kind::Heartbeat(pb::Heartbeat {}));
                if tx.send(beat).await.is_err() {
                    tracing::debug!(%job, "heartbeats stop: the stream closed");
                    return;
                }
            }
        })
    }

    /// Reads `r` to the end in chunks and sends them as data frames;
    /// returns the raw bytes sent.
    pub async fn send_reader(
        &self,
        mut r: Chunked<'_>,
        enc: &mut Encoder,
    ) -> Result<u64, StepError> {
        let job = &self.job;
        let mut total = 0u64;
        loop {
            let chunk = tokio::select! {
                _ = job.cancel.cancelled() => return Err(StepError::cancelled(pb::Step::PgDump)),
                c = r.next() => c.map_err(|e| {
                    StepError::new(pb::Step::PgDump, format!("reading the dump: {e}"))
                })?,
            };
            let filled = chunk.len();
            if filled == 0 {
                return Ok(total);
            }
            let data = enc
                .data(chunk)
                .map_err(|e| StepError::new(pb::Step::Stream, format!("compressing: {e}")))?;
            job.dumped.fetch_add(filled as u64, Ordering::Relaxed);
            job.sent
                .fetch_add(data.payload.len() as u64, Ordering::Relaxed);
            total += filled as u64;
            // The stream is full, so the send below waits: meanwhile the
            // server's writes into the socket need not wake the agent.
            if self.tx.capacity() == 0 {
                r.park();
            }
            self.send(frame(pb::dump_frame::Kind::Data(data))).await?;
            if filled < CHUNK && r.short_means_end() {
                return Ok(total);
            }
        }
    }

    /// Sends the file `dir/name` between a FileStart and a FileEnd, then
    /// removes it (shipped: the source's disk is freed as it goes).
    pub async fn send_file(
        &self,
        dir: &Path,
        name: &str,
        enc: &mut Encoder,
    ) -> Result<(), StepError> {
        let path: PathBuf = dir.join(name);
        let mut f = tokio::fs::File::open(&path).await.map_err(|e| {
            StepError::new(pb::Step::PgDump, format!("opening {}: {e}", path.display()))
        })?;
        let start = pb::FileStart {
            name: name.to_string(),
        };
        self.send(frame(pb::dump_frame::Kind::FileStart(start)))
            .await?;
        let size = self.send_reader(Chunked::File(&mut f), enc).await?;
        let end = pb::FileEnd {
            name: name.to_string(),
            size,
        };
        self.send(frame(pb::dump_frame::Kind::FileEnd(end))).await?;
        drop(f);
        let _ = tokio::fs::remove_file(&path).await;
        Ok(())
    }
}
