//! The one reader of a destination's incoming frames, whatever feeds them
//! (a peer's stream, a backup in S3) and whatever restores them (one
//! stream, data lanes).
//!
//! It owns the rules every path shares: a stall or a cancel ends the wait;
//! each lane's frames are checked by its own decoder (sequence, CRC32C,
//! length, digest at its end); a file the restorer accepts is landed in the
//! work directory under a size cap and checked against the source's account
//! of it; the trailer comes last, outside any file, with every lane closed.
//! The paths only say what they do with the bytes and which files they
//! accept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use stagesync_proto::v1 as pb;
use tokio::io::AsyncWriteExt;
use tonic::Status;

use crate::frames::{Decoder, frame_kind};
use crate::jobs::{Job, StepError};

/// What the reader found next.
pub enum Event {
    /// Verified bytes of `lane`, outside any file.
    Data { lane: usize, raw: Bytes },
    /// A file starts; the restorer [`Inbound::land`]s it or refuses it.
    FileStart(pb::FileStart),
    /// An accepted file arrived whole, at this path.
    FileLanded(PathBuf),
    /// Lane `lane` ended, its digest checked.
    LaneEnded(usize),
    /// Copy lane `lane`'s next bytes are slice `slice` of lane table
    /// `table`.
    TableStart {
        lane: usize,
        table: usize,
        slice: u32,
    },
    /// The slice copy lane `lane` carried is whole, its digest so far
    /// checked.
    TableEnded { lane: usize, rows: u64 },
    /// The trailer: the stream is complete and every lane checked.
    End,
}

impl Event {
    /// What kind of frame brought this event, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Data { .. } => "data",
            Event::FileStart(_) => "file start",
            Event::FileLanded(_) => "file end",
            Event::LaneEnded(_) => "lane end",
            Event::TableStart { .. } => "table start",
            Event::TableEnded { .. } => "table end",
            Event::End => "trailer",
        }
    }

    /// The error for an event that has no place where it arrived (`place`:
    /// "in a stream-mode job", "among the data lanes", ...).
    pub fn unexpected(&self, place: &str) -> StepError {
        stream_error(format!(
            "an unexpected {} frame arrived {place}",
            self.kind()
        ))
    }
}

fn stream_error(message: impl Into<String>) -> StepError {
    StepError::new(pb::Step::Stream, message)
}

/// Where frames come from: a peer agent's stream, or a backup in S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Peer,
    Backup,
}

impl Origin {
    fn describe(self) -> &'static str {
        match self {
            Origin::Peer => "the source agent",
            Origin::Backup => "the backup in S3",
        }
    }
}

/// The reader of one job's incoming frames.
pub struct Inbound<S> {
    frames: S,
    job: Arc<Job>,
    origin: Origin,
    stall: Duration,
    /// One decoder per lane.
    decoders: Vec<Decoder>,
    /// Lanes 1 and up that have not ended.
    open: Vec<bool>,
    /// With data lanes: lane 0's data ended (its LaneEnd came, checked), so
    /// its consumer can finish before the trailer.
    lane0_ended: bool,
    /// The file being landed, if one is open.
    landing: Option<Landing>,
    /// Per lane: the slice `(table, slice)` it is carrying, if any.
    carrying: Vec<Option<(usize, u32)>>,
    /// Per lane table: its name, and which of its slices arrived.
    arrived: Vec<(String, Vec<bool>)>,
}

impl<S> Inbound<S>
where
    S: Stream<Item = Result<pb::DumpFrame, Status>> + Unpin,
{
    pub fn new(
        frames: S,
        job: Arc<Job>,
        origin: Origin,
        stall: Duration,
        compression: pb::Compression,
        digest: pb::Digest,
        lanes: u32,
    ) -> Self {
        let lanes = lanes.max(1);
        Inbound {
            frames,
            job,
            origin,
            stall,
            decoders: (0..lanes)
                .map(|n| Decoder::for_lane(compression, n).with_digest(digest))
                .collect(),
            open: (0..lanes).map(|n| n > 0).collect(),
            lane0_ended: false,
            landing: None,
            carrying: vec![None; lanes as usize],
            arrived: Vec::new(),
        }
    }

    /// The tables the copy lanes carry (the header's `lane_tables`): each
    /// slice of each must arrive once before the trailer.
    pub fn expect_tables(&mut self, tables: &[pb::LaneTable]) {
        self.arrived = tables
            .iter()
            .map(|t| {
                let name = format!("{}.{}", t.schema, t.table);
                (name, vec![false; t.slices.max(1) as usize])
            })
            .collect();
    }

    /// Lanes the stream has.
    fn lanes(&self) -> usize {
        self.decoders.len()
    }

    /// The next event; files being landed are written on the way.
    pub async fn next(&mut self) -> Result<Event, StepError> {
        loop {
            let event = match self.next_frame().await? {
                pb::dump_frame::Kind::Data(d) => self.data(&d).await?,
                pb::dump_frame::Kind::FileStart(f) => {
                    if self.landing.is_some() {
                        return Err(stream_error("a file started before the previous one ended"));
                    }
                    Some(Event::FileStart(f))
                }
                pb::dump_frame::Kind::FileEnd(end) => {
                    let landing = self
                        .landing
                        .take()
                        .ok_or_else(|| stream_error("a file ended that never started"))?;
                    Some(Event::FileLanded(landing.end(&end).await?))
                }
                pb::dump_frame::Kind::LaneEnd(end) => Some(self.lane_end(&end)?),
                pb::dump_frame::Kind::TableStart(t) => Some(self.table_start(&t)?),
                pb::dump_frame::Kind::TableEnd(t) => Some(self.table_end(&t)?),
                pb::dump_frame::Kind::Trailer(t) => Some(self.trailer(&t)?),
                other @ (pb::dump_frame::Kind::Header(_) | pb::dump_frame::Kind::Heartbeat(_)) => {
                    return Err(stream_error(format!(
                        "an unexpected {} frame arrived in the stream",
                        frame_kind(&other)
                    )));
                }
            };
            // None: landed into the open file; read on.
            if let Some(e) = event {
                return Ok(e);
            }
        }
    }

    /// Accepts the file `f` announced: its bytes land in `dir`, at most
    /// `max` of them, until its end.
    pub async fn land(
        &mut self,
        dir: &Path,
        f: &pb::FileStart,
        max: FileCap,
    ) -> Result<(), StepError> {
        self.landing = Some(Landing::start(dir, f, max).await?);
        Ok(())
    }

    /// A data frame: checked by its lane's decoder, then landed into the
    /// open file (lane 0 only) or handed on.
    async fn data(&mut self, d: &pb::DumpData) -> Result<Option<Event>, StepError> {
        let lane = d.lane as usize;
        let lanes = self.lanes();
        let decoder = self.decoders.get_mut(lane).ok_or_else(|| {
            stream_error(format!(
                "a frame for data lane {lane} arrived; the stream has {lanes}"
            ))
        })?;
        if (lane > 0 && !self.open[lane]) || (lane == 0 && self.lane0_ended) {
            return Err(stream_error(format!(
                "data arrived on lane {lane} after its end"
            )));
        }
        if lane > 0 && self.carrying[lane].is_none() {
            return Err(stream_error(format!(
                "data arrived on copy lane {lane} outside a table"
            )));
        }
        let raw = decoder.data(d).map_err(|e| self.lane_error(lane, e))?;
        match self.landing.as_mut() {
            Some(_) if lane > 0 => Err(stream_error(format!(
                "data lane {lane} sent data inside a file"
            ))),
            Some(l) => {
                l.write(&raw).await?;
                self.job
                    .restored
                    .fetch_add(raw.len() as u64, Ordering::Relaxed);
                Ok(None)
            }
            None => Ok(Some(Event::Data { lane, raw })),
        }
    }

    fn lane_end(&mut self, end: &pb::LaneEnd) -> Result<Event, StepError> {
        let lane = end.lane as usize;
        if lane >= self.lanes() || self.lanes() < 2 {
            return Err(stream_error(format!(
                "an end of data lane {lane} arrived; the stream has lanes 0 to {}",
                self.lanes().saturating_sub(1)
            )));
        }
        if lane == 0 {
            return self.lane0_end(end);
        }
        if !self.open[lane] {
            return Err(stream_error(format!("data lane {lane} ended twice")));
        }
        if self.carrying[lane].is_some() {
            return Err(stream_error(format!(
                "copy lane {lane} ended inside a table"
            )));
        }
        self.check_so_far(lane, end.trailer.as_ref())?;
        self.open[lane] = false;
        Ok(Event::LaneEnded(lane))
    }

    /// Lane 0's data is over (the trailer, which also covers it, comes
    /// once every lane is): checked now, so its consumer can finish.
    fn lane0_end(&mut self, end: &pb::LaneEnd) -> Result<Event, StepError> {
        if self.landing.is_some() {
            return Err(stream_error("data lane 0 ended inside a file"));
        }
        if self.lane0_ended {
            return Err(stream_error("data lane 0 ended twice"));
        }
        self.check_so_far(0, end.trailer.as_ref())?;
        self.lane0_ended = true;
        Ok(Event::LaneEnded(0))
    }

    /// A copy lane starts a slice of a table the header names, once.
    fn table_start(&mut self, t: &pb::TableStart) -> Result<Event, StepError> {
        let lane = t.lane as usize;
        if lane == 0 || lane >= self.lanes() || !self.open[lane] {
            return Err(stream_error(format!(
                "a table started on lane {lane}, which is not an open copy lane"
            )));
        }
        if self.carrying[lane].is_some() {
            return Err(stream_error(format!(
                "a table started on copy lane {lane} before the previous one ended"
            )));
        }
        let (table, slice) = (t.table as usize, t.slice);
        let (name, seen) = self
            .arrived
            .get_mut(table)
            .and_then(|(name, slices)| Some((name, slices.get_mut(slice as usize)?)))
            .ok_or_else(|| {
                stream_error(format!(
                    "copy lane {lane} started slice {slice} of lane table {table}, which the header does not name"
                ))
            })?;
        if *seen {
            return Err(stream_error(format!(
                "slice {slice} of {name} arrived twice"
            )));
        }
        *seen = true;
        self.carrying[lane] = Some((table, slice));
        Ok(Event::TableStart { lane, table, slice })
    }

    /// A copy lane's slice is whole: its digest so far must match.
    fn table_end(&mut self, t: &pb::TableEnd) -> Result<Event, StepError> {
        let lane = t.lane as usize;
        if self.carrying.get(lane).copied().flatten().is_none() {
            return Err(stream_error(format!(
                "a table ended on lane {lane}, which carries none"
            )));
        }
        self.check_so_far(lane, t.so_far.as_ref())?;
        self.carrying[lane] = None;
        Ok(Event::TableEnded { lane, rows: t.rows })
    }

    fn trailer(&mut self, t: &pb::DumpTrailer) -> Result<Event, StepError> {
        if self.landing.is_some() {
            return Err(stream_error("the stream ended inside a file"));
        }
        if let Some(open) = self.open.iter().position(|o| *o) {
            return Err(stream_error(format!(
                "the stream ended with data lane {open} still open"
            )));
        }
        if let Some((name, _)) = self.arrived.iter().find(|(_, s)| s.contains(&false)) {
            return Err(stream_error(format!(
                "the stream ended without all the rows of {name}"
            )));
        }
        self.decoders[0]
            .finish(t)
            .map_err(|e| self.lane_error(0, e))?;
        Ok(Event::End)
    }

    /// Checks `lane`'s bytes so far against the source's account of them
    /// (a lane end's or a table end's).
    fn check_so_far(&self, lane: usize, so_far: Option<&pb::DumpTrailer>) -> Result<(), StepError> {
        let empty = pb::DumpTrailer::default();
        self.decoders[lane]
            .finish(so_far.unwrap_or(&empty))
            .map_err(|e| self.lane_error(lane, e))
    }

    /// A frame error, naming the lane when the stream has several.
    fn lane_error(&self, lane: usize, e: crate::frames::FrameError) -> StepError {
        match self.lanes() {
            1 => StepError::from(e),
            _ => stream_error(format!("data lane {lane}: {e}")),
        }
    }

    /// Waits for the next frame that is not a heartbeat, giving up on a
    /// stall or cancellation.
    async fn next_frame(&mut self) -> Result<pb::dump_frame::Kind, StepError> {
        let origin = self.origin.describe();
        loop {
            let msg = tokio::select! {
                _ = self.job.cancel.cancelled() => return Err(StepError::cancelled(pb::Step::Stream)),
                r = tokio::time::timeout(self.stall, self.frames.next()) => r.map(Option::transpose),
            };
            let msg = msg.map_err(|_| {
                stream_error(format!(
                    "no data from {origin} for {} s (jobs.stall_timeout_secs): the link or the source is down",
                    self.stall.as_secs()
                ))
            })?;
            let msg = msg.map_err(|s| {
                stream_error(format!("the stream from {origin} broke: {}", s.message()))
            })?;
            return match msg {
                // Alive but quiet: wait for the next frame with a fresh timer.
                Some(pb::DumpFrame {
                    kind: Some(pb::dump_frame::Kind::Heartbeat(_)),
                }) => continue,
                Some(pb::DumpFrame { kind: Some(k) }) => {
                    if let pb::dump_frame::Kind::Data(d) = &k {
                        self.job
                            .received
                            .fetch_add(d.payload.len() as u64, Ordering::Relaxed);
                    }
                    Ok(k)
                }
                Some(_) => Err(stream_error("an empty frame arrived")),
                None => Err(stream_error(format!(
                    "the stream ended before its trailer: {origin} stopped or failed"
                ))),
            };
        }
    }
}

/// The most bytes a landed file may have, the free space it must leave on
/// its file system, and what to tell the operator when a file is larger.
#[derive(Clone, Copy, Debug)]
pub struct FileCap {
    pub max: u64,
    /// Bytes that must stay free on the work directory's file system: a
    /// peer cannot fill the disk the database lives on.
    pub keep_free: u64,
    /// The file, as a message names it ("schema file").
    pub what: &'static str,
    /// What to do about a larger file (appended to the error).
    pub advice: &'static str,
}

/// How often (in bytes written) a landing file checks the free space.
const FREE_SPACE_EVERY: u64 = 64 << 20;

fn size_text(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// A file from the peer being written into a work directory.
struct Landing {
    name: String,
    path: PathBuf,
    file: tokio::fs::File,
    written: u64,
    cap: FileCap,
}

impl Landing {
    async fn start(dir: &Path, f: &pb::FileStart, cap: FileCap) -> Result<Self, StepError> {
        let name = check_file_name(&f.name)?;
        let path = dir.join(&name);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| stream_error(format!("creating {}: {e}", path.display())))?;
        Ok(Landing {
            name,
            path,
            file,
            written: 0,
            cap,
        })
    }

    /// Writes the next bytes of the file, refusing them past the cap.
    async fn write(&mut self, raw: &[u8]) -> Result<(), StepError> {
        if self.written + raw.len() as u64 > self.cap.max {
            return Err(stream_error(format!(
                "the {} from the source exceeds {}{}",
                self.cap.what,
                size_text(self.cap.max),
                self.cap.advice
            )));
        }
        // At the file's first bytes, then every FREE_SPACE_EVERY.
        if self.written / FREE_SPACE_EVERY != (self.written + raw.len() as u64) / FREE_SPACE_EVERY
            || self.written == 0
        {
            self.check_free_space(raw.len() as u64)?;
        }
        self.file
            .write_all(raw)
            .await
            .map_err(|e| stream_error(format!("writing {}: {e}", self.path.display())))?;
        self.written += raw.len() as u64;
        Ok(())
    }

    /// Refuses to go on when the file system would keep less than
    /// `cap.keep_free` bytes free.
    fn check_free_space(&self, next: u64) -> Result<(), StepError> {
        let dir = self.path.parent().unwrap_or(&self.path);
        let free = crate::pg::free_bytes(dir);
        if free.saturating_sub(next) < self.cap.keep_free {
            return Err(stream_error(format!(
                "landing {} would leave less than {} free on the file system of {} ({} free): free space there, or refresh with --jobs 1 to restore without landing files",
                self.name,
                size_text(self.cap.keep_free),
                dir.display(),
                size_text(free)
            )));
        }
        Ok(())
    }

    /// Checks the source's account of the file and closes it.
    async fn end(mut self, end: &pb::FileEnd) -> Result<PathBuf, StepError> {
        if end.name != self.name || end.size != self.written {
            return Err(stream_error(format!(
                "file {} ended with {} bytes, the source says {} bytes of {}",
                self.name, self.written, end.size, end.name
            )));
        }
        self.file
            .flush()
            .await
            .map_err(|e| stream_error(format!("writing {}: {e}", self.path.display())))?;
        Ok(self.path)
    }
}

/// A file name from the peer: one plain path component, nothing else.
pub fn check_file_name(name: &str) -> Result<String, StepError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(name.to_string())
    } else {
        Err(stream_error(format!(
            "the source sent an unacceptable file name {name:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::check_file_name;

    #[test]
    fn file_names() {
        for ok in ["toc.dat", "3456.dat", "blobs.toc", "blob_1234.dat"] {
            assert!(check_file_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "/etc/passwd",
            "..",
            "a\0b",
            &"x".repeat(65),
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
    }
}
