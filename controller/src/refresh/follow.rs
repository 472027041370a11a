//! Following a job on its agents: each side's status stream is forwarded
//! into one channel, tagged with its side, until the destination is ready
//! (and the source has said its last word) or a side fails or goes silent.

use std::sync::Arc;
use std::time::Duration;

use stagesync_proto::v1 as pb;
use tokio::sync::mpsc;

use super::{Event, RefreshError};
use crate::client::{self, AgentTarget, ClientTls};

/// One end of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Dest,
}

impl Side {
    pub fn describe(self) -> &'static str {
        match self {
            Side::Source => "the source agent",
            Side::Dest => "the destination agent",
        }
    }

    fn proto(self) -> pb::Side {
        match self {
            Side::Source => pb::Side::Source,
            Side::Dest => pb::Side::Dest,
        }
    }
}

/// A status, the end of a side's stream (`None`), or why it broke.
type Message = (Side, Result<Option<pb::JobStatus>, String>);

/// How long a side that failed first gives the other to report its view.
const GRACE: Duration = Duration::from_secs(2);

/// The last statuses of a job that is ready to commit.
pub struct Finals {
    pub source: Option<pb::JobStatus>,
    pub dest: pb::JobStatus,
}

/// Why following stopped: the error to report, and the reason to give
/// the agents when aborting.
pub struct Stopped {
    pub error: RefreshError,
    pub abort_reason: String,
}

/// The job's statuses as they come.
pub struct Follow<T> {
    tls: Arc<T>,
    job_id: String,
    /// Dropped once following starts, so the channel closes when every
    /// side's stream has ended.
    tx: Option<mpsc::Sender<Message>>,
    rx: mpsc::Receiver<Message>,
    targets: Vec<(Side, AgentTarget)>,
    source: Option<pb::JobStatus>,
    dest: Option<pb::JobStatus>,
}

pub fn phase(s: &pb::JobStatus) -> pb::Phase {
    pb::Phase::try_from(s.phase).unwrap_or(pb::Phase::Unspecified)
}

fn failed(s: &pb::JobStatus) -> bool {
    matches!(phase(s), pb::Phase::Failed | pb::Phase::Aborted)
}

/// The source has said its last word.
fn finished(s: &pb::JobStatus) -> bool {
    matches!(
        phase(s),
        pb::Phase::Sent | pb::Phase::Failed | pb::Phase::Aborted
    )
}

impl<T: ClientTls> Follow<T> {
    pub fn new(tls: Arc<T>, job_id: &str) -> Self {
        let (tx, rx) = mpsc::channel(16);
        Follow {
            tls,
            job_id: job_id.to_string(),
            tx: Some(tx),
            rx,
            targets: Vec::new(),
            source: None,
            dest: None,
        }
    }

    /// Starts following `side` on `target`.
    pub fn watch(&mut self, side: Side, target: &AgentTarget) {
        let Some(tx) = self.tx.clone() else {
            return;
        };
        self.targets.push((side, target.clone()));
        tokio::spawn(forward(
            self.tls.clone(),
            target.clone(),
            self.job_id.clone(),
            side,
            tx,
        ));
    }

    fn watches(&self, side: Side) -> bool {
        self.targets.iter().any(|(s, _)| *s == side)
    }

    /// Follows the job until the destination is ready, reporting progress.
    pub async fn until_ready(
        mut self,
        on_event: &mut impl FnMut(Event),
    ) -> Result<Finals, Stopped> {
        self.tx = None;
        loop {
            let Some((side, msg)) = self.rx.recv().await else {
                return Err(Stopped {
                    error: RefreshError::Lost("both agents".into(), "no status".into()),
                    abort_reason: "the controller lost both agents".into(),
                });
            };
            match msg {
                Ok(Some(status)) => {
                    self.keep(side, status);
                    on_event(Event::Progress {
                        source: self.source.clone().map(Box::new),
                        dest: self.dest.clone().map(Box::new),
                    });
                }
                Ok(None) if side == Side::Source && self.source.as_ref().is_some_and(finished) => {
                    continue;
                }
                Ok(None) => return Err(self.lost(side, "its status stream ended".into())),
                Err(why) => return Err(self.lost(side, why)),
            }
            if self.source.as_ref().is_some_and(failed) || self.dest.as_ref().is_some_and(failed) {
                return Err(self.failure().await);
            }
            if self.dest.as_ref().map(phase) == Some(pb::Phase::Ready) {
                return Ok(self.finals().await);
            }
        }
    }

    fn keep(&mut self, side: Side, status: pb::JobStatus) {
        match side {
            Side::Source => self.source = Some(status),
            Side::Dest => self.dest = Some(status),
        }
    }

    /// A side went silent: a failure it reported before explains more.
    fn lost(&self, side: Side, why: String) -> Stopped {
        if let Some(e) = self.best_error() {
            return Stopped {
                abort_reason: e.message.clone(),
                error: RefreshError::from(e),
            };
        }
        let address = self
            .targets
            .iter()
            .find(|(s, _)| *s == side)
            .map(|(_, t)| t.address.as_str())
            .unwrap_or_default();
        Stopped {
            error: RefreshError::Lost(format!("{} ({address})", side.describe()), why),
            abort_reason: format!("lost {}", side.describe()),
        }
    }

    /// A side failed: the other gets a moment to report its view, then the
    /// error that explains most is chosen.
    async fn failure(&mut self) -> Stopped {
        let both = self.watches(Side::Source);
        let deadline = tokio::time::sleep(GRACE);
        tokio::pin!(deadline);
        while both
            && !(self.source.as_ref().is_some_and(failed) && self.dest.as_ref().is_some_and(failed))
        {
            tokio::select! {
                _ = &mut deadline => break,
                m = self.rx.recv() => match m {
                    Some((side, Ok(Some(s)))) => self.keep(side, s),
                    Some(_) => {}
                    None => break,
                },
            }
        }
        let e = self.best_error().unwrap_or(pb::JobError {
            step: pb::Step::Unspecified as i32,
            host: String::new(),
            message: "failed without a reason".into(),
            stderr_tail: String::new(),
        });
        Stopped {
            abort_reason: format!("{} failed", e.failed_step()),
            error: RefreshError::from(e),
        }
    }

    /// The destination is ready: waits for the source's last status (it
    /// comes as soon as the destination answered its stream), so the
    /// counters reported are final ones, not the last progress sample.
    async fn finals(mut self) -> Finals {
        if self.watches(Side::Source) {
            while !self.source.as_ref().is_some_and(finished) {
                match self.rx.recv().await {
                    Some((Side::Source, Ok(Some(s)))) => self.source = Some(s),
                    Some((Side::Dest, Ok(Some(_)))) => {}
                    // The source's stream ended or broke: its last status
                    // is all there is; the destination verified the data.
                    Some((Side::Source, _)) | None => break,
                    Some((Side::Dest, _)) => {}
                }
            }
        }
        Finals {
            source: self.source,
            dest: self.dest.unwrap_or_default(),
        }
    }

    /// Picks the error that explains a failure best: a tool or SQL failure
    /// over the stream breaking, which is usually its consequence, and any
    /// failure over an abort.
    fn best_error(&self) -> Option<pb::JobError> {
        let errs: Vec<pb::JobError> = [self.source.as_ref(), self.dest.as_ref()]
            .into_iter()
            .flatten()
            .filter(|s| failed(s))
            .filter_map(|s| s.error.clone())
            .collect();
        let step = |e: &pb::JobError| e.failed_step();
        errs.iter()
            .find(|e| !matches!(step(e), pb::Step::Stream | pb::Step::Abort))
            .or_else(|| errs.iter().find(|e| step(e) != pb::Step::Abort))
            .or(errs.first())
            .cloned()
    }
}

/// Forwards a job's status stream on `target` into `tx` until it ends.
async fn forward<T: ClientTls>(
    tls: Arc<T>,
    target: AgentTarget,
    job_id: String,
    side: Side,
    tx: mpsc::Sender<Message>,
) {
    let opened = async {
        let mut c = client::connect(tls, &target)
            .await
            .map_err(|e| e.to_string())?;
        let req = pb::WatchJobRequest {
            job_id,
            side: side.proto() as i32,
        };
        let resp = c
            .watch_job(req)
            .await
            .map_err(|s| client::explain(&target, &s).to_string())?;
        Ok::<_, String>(resp.into_inner())
    }
    .await;
    let mut stream = match opened {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send((side, Err(e))).await;
            return;
        }
    };
    loop {
        let msg = match stream.message().await {
            Ok(Some(s)) => Ok(Some(s)),
            Ok(None) => Ok(None),
            Err(status) => Err(client::explain(&target, &status).to_string()),
        };
        let last = !matches!(msg, Ok(Some(_)));
        if tx.send((side, msg)).await.is_err() || last {
            return;
        }
    }
}
