//! Child processes (`pg_dump`, `pg_restore`): started so they die with the
//! agent, their stderr kept as a bounded tail for error messages, and killed
//! and reaped when their job is cancelled.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// The last lines a tool wrote to stderr.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

const TAIL_LINES: usize = 20;

impl StderrTail {
    pub fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }
}

/// A line of a tool's stderr without the data PostgreSQL may quote in it:
/// a DETAIL (`Key (email)=(...)`, `Failing row contains (...)`) and the row
/// a COPY failed on (`COPY t, line 3: "..."`). Such lines reach terminals
/// and run histories; the rest of the error says what failed, where.
fn without_values(line: String) -> String {
    if let Some(at) = line.find("DETAIL:") {
        return format!(
            "{} (withheld: it may quote rows)",
            &line[..at + "DETAIL:".len()]
        );
    }
    if let Some(copy) = line.find("COPY ")
        && let Some(rel) = line[copy..].find(", line ")
    {
        let digits = copy + rel + ", line ".len();
        let end = line[digits..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(line.len(), |n| digits + n);
        if end < line.len() {
            return format!("{} (the row is withheld)", &line[..end]);
        }
    }
    line
}

/// The PostgreSQL client programs the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    PgDump,
    PgRestore,
    /// Any program, for the tests of this module.
    #[cfg(test)]
    Other(&'static str),
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::PgDump => "pg_dump",
            Program::PgRestore => "pg_restore",
            #[cfg(test)]
            Program::Other(name) => name,
        }
    }
}

/// A running tool.
pub struct Tool {
    pub program: Program,
    pub name: &'static str,
    pub child: Child,
    pub stderr: StderrTail,
    reader: Option<tokio::task::JoinHandle<()>>,
    /// Its stdin pipe holds `PIPE_SIZE`: writes into it may wait for room.
    stdin_wide: bool,
}

/// Longest stderr line kept (pg_restore echoes whole failed commands).
const MAX_LINE: usize = 2048;

/// Starts `bin_dir/name args` with the given stdin/stdout; `settings`
/// (`name=value`) become the tool's session settings through PGOPTIONS.
pub fn spawn(
    bin_dir: &Path,
    program: Program,
    args: &[String],
    settings: &[String],
    env: &[(&'static str, String)],
    stdin: Stdio,
    stdout: Stdio,
) -> std::io::Result<Tool> {
    let name = program.name();
    let mut cmd = Command::new(bin_dir.join(name));
    let options: Vec<String> = settings.iter().map(|s| format!("-c {s}")).collect();
    // A password travels in the environment (readable only by this user),
    // never on the command line.
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.args(args)
        .env("PGOPTIONS", options.join(" "))
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .env("PGAPPNAME", format!("stagesync-{name}"))
        // Its own process group, so a cancel reaches the -j workers too.
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes the prctl system call, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // If the agent dies (even by SIGKILL), the tool dies with it
            // instead of writing into a database nobody will swap in.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn()?;
    let stdin_wide = child.stdin.as_ref().is_some_and(widen_pipe);
    if let Some(pipe) = &child.stdout {
        widen_pipe(pipe);
    }
    let tail = StderrTail::default();
    let reader = child
        .stderr
        .take()
        .map(|err| tokio::spawn(keep_stderr(err, tail.clone(), name)));
    Ok(Tool {
        program,
        name,
        child,
        stderr: tail,
        reader,
        stdin_wide,
    })
}

/// Reads a tool's stderr to its end: every line logged, the last ones
/// kept in `tail` (each cut to [`MAX_LINE`]), and never a row of data.
async fn keep_stderr(err: tokio::process::ChildStderr, tail: StderrTail, name: &'static str) {
    let mut lines = BufReader::new(err).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut line = without_values(line);
        tracing::debug!(tool = name, line = %line, "stderr");
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" [...]");
        }
        tail.push(line);
    }
}

/// Starts `pg_dump`: it reads nothing and takes no session settings; its
/// archive goes to `stdout` (or to the file its arguments name).
pub fn spawn_pg_dump(
    bin_dir: &Path,
    args: &[String],
    env: &[(&'static str, String)],
    stdout: Stdio,
) -> std::io::Result<Tool> {
    spawn(
        bin_dir,
        Program::PgDump,
        args,
        &[],
        env,
        Stdio::null(),
        stdout,
    )
}

/// Pipe buffer for a tool's data pipe. At the default 64 KiB the tool and
/// the agent wake each other for every few writes; 1 MiB (Linux's default
/// ceiling for unprivileged processes) lets each side work in longer runs.
const PIPE_SIZE: i32 = 1 << 20;

/// Widens `pipe` to `PIPE_SIZE` and says whether it now is that wide: only
/// then is there room to wait [`PIPE_COALESCE`] between reads or writes
/// without stalling the tool.
fn widen_pipe(pipe: &impl std::os::fd::AsFd) -> bool {
    use nix::fcntl::{FcntlArg, fcntl};
    // Best effort: a smaller pipe is only slower.
    if let Err(e) = fcntl(pipe.as_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            tracing::warn!(error = %e, "cannot widen the pipes to pg_dump and pg_restore to 1 MiB (see fs.pipe-max-size and fs.pipe-user-pages-soft); dumps move slower");
        });
    }
    fcntl(pipe.as_fd(), FcntlArg::F_GETPIPE_SZ).is_ok_and(|size| size >= PIPE_SIZE)
}

/// How long a pipe reader or writer waits after a small read or a short
/// write before trying again. pg_dump writes and pg_restore reads a few KiB
/// at a time; answering each of those at once costs two context switches per
/// few KiB, on a host whose cores the database needs. Waiting this long lets
/// the 1 MiB pipe fill or drain by a useful amount instead, and is far too
/// short for it to fill or drain completely at the rates a dump moves.
const PIPE_COALESCE: std::time::Duration = std::time::Duration::from_millis(2);
/// A read shorter than this is "small": the next one waits `PIPE_COALESCE`.
const SMALL_READ: usize = 64 * 1024;

/// A tool's stdin pipe, from [`Tool::take_stdin`].
pub struct Stdin {
    pipe: tokio::process::ChildStdin,
    wide: bool,
}

impl Stdin {
    /// Writes all of `data`. When the pipe takes only part of it, the rest
    /// waits `PIPE_COALESCE` for the reader to drain more, instead of
    /// following it a few KiB at a time (not in a narrow pipe, where
    /// waiting would leave the reader idle).
    pub async fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let n = self.pipe.write(data).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
            if !data.is_empty() && self.wide {
                tokio::time::sleep(PIPE_COALESCE).await;
            }
        }
        Ok(())
    }
}

/// A tool's stdout, read by a thread of its own in chunks of
/// [`CHUNK`](crate::frames::CHUNK) bytes (fewer only at the end).
///
/// Not through the async runtime: once a pipe has been polled, Linux wakes
/// its poller on every write into it, and pg_dump writes a few KiB at a
/// time. A blocking reader that sleeps [`PIPE_COALESCE`] after a small read
/// is woken about once per chunk instead.
pub struct Chunks {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
}

/// Chunks waiting between the reader thread and the stream.
const CHUNKS_QUEUED: usize = 2;

impl Chunks {
    /// The next chunk: `CHUNK` bytes, fewer only at the end, and empty once
    /// the tool closed its stdout.
    pub async fn next(&mut self) -> std::io::Result<bytes::Bytes> {
        self.rx
            .recv()
            .await
            .unwrap_or_else(|| Ok(bytes::Bytes::new()))
    }
}

/// A pipe for a tool's stdout (pass the `Stdio` to [`spawn`]) and its
/// reading end as [`Chunks`].
pub fn chunked_stdout() -> std::io::Result<(Stdio, Chunks)> {
    use crate::frames::CHUNK;
    use std::io::Read;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let coalesce = widen_pipe(&write);
    let mut file = std::fs::File::from(read);
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_QUEUED);
    std::thread::Builder::new()
        .name("tool-stdout".into())
        .spawn(move || {
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                let end = loop {
                    match file.read(&mut buf[filled..]) {
                        Ok(0) => break true,
                        Ok(n) => {
                            filled += n;
                            if filled == CHUNK {
                                break false;
                            }
                            if coalesce && n < SMALL_READ {
                                std::thread::sleep(PIPE_COALESCE);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e));
                            return;
                        }
                    }
                };
                buf.truncate(filled);
                // A closed queue: nobody reads any more; dropping the pipe
                // stops the tool with EPIPE.
                if tx.blocking_send(Ok(buf.into())).is_err() || end {
                    return;
                }
            }
        })?;
    Ok((Stdio::from(write), Chunks { rx }))
}

impl Tool {
    /// The tool's stdin, when it was started with a pipe there.
    pub fn take_stdin(&mut self) -> Option<Stdin> {
        let wide = self.stdin_wide;
        self.child.stdin.take().map(|pipe| Stdin { pipe, wide })
    }

    /// Stops the tool and its workers: SIGTERM to the process group (the
    /// tools pass it on and cancel their queries), SIGKILL if they are still
    /// there after a grace period, then reaps.
    pub async fn kill(&mut self) {
        if let Some(pid) = self.child.id() {
            let group = nix::unistd::Pid::from_raw(-(pid as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(std::time::Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
            {
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            } else {
                // The leader is gone; make sure no worker outlives it.
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.drain().await;
    }

    /// Waits (briefly) until everything the tool wrote to stderr was read,
    /// so the tail holds its last words.
    pub async fn drain(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), r).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_lines_keep_no_rows() {
        let cases = [
            (
                "DETAIL:  Key (email)=(zq7@leak.invalid) already exists.",
                "DETAIL: (withheld: it may quote rows)",
            ),
            (
                "CONTEXT:  COPY users, line 3: \"3\tzq7@leak.invalid\"",
                "CONTEXT:  COPY users, line 3 (the row is withheld)",
            ),
            (
                "CONTEXT:  COPY users, line 3, column email: \"zq7\"",
                "CONTEXT:  COPY users, line 3 (the row is withheld)",
            ),
            (
                "pg_restore: error: COPY failed for table \"users\": ERROR:  new row violates check constraint \"c\"",
                "pg_restore: error: COPY failed for table \"users\": ERROR:  new row violates check constraint \"c\"",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(without_values(line.to_string()), want);
        }
    }

    /// Starts `dir/name` with no arguments and no session settings.
    fn start(dir: &str, name: &'static str, stdin: Stdio, stdout: Stdio) -> Tool {
        spawn(
            Path::new(dir),
            Program::Other(name),
            &[],
            &[],
            &[],
            stdin,
            stdout,
        )
        .expect(name)
    }

    #[tokio::test]
    async fn data_pipes_are_widened() {
        let mut tool = start("/bin", "cat", Stdio::piped(), Stdio::piped());
        let size = |fd: std::os::fd::BorrowedFd<'_>| {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETPIPE_SZ).expect("F_GETPIPE_SZ")
        };
        use std::os::fd::AsFd;
        let stdin = tool.child.stdin.take().expect("stdin");
        let stdout = tool.child.stdout.take().expect("stdout");
        // Unprivileged processes may not go past fs.pipe-max-size; there
        // the pipe stays as it was (best effort), and there is nothing to see.
        let max: i32 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(PIPE_SIZE);
        if nix::unistd::geteuid().is_root() || max >= PIPE_SIZE {
            assert_eq!(size(stdin.as_fd()), PIPE_SIZE);
            assert_eq!(size(stdout.as_fd()), PIPE_SIZE);
        }
        drop(stdin);
        tool.kill().await;
    }

    #[tokio::test]
    async fn stdout_arrives_in_whole_chunks_and_coalesced_writes_lose_nothing() {
        use crate::frames::CHUNK;
        let (stdout, mut chunks) = chunked_stdout().expect("pipe");
        let mut tool = start("/bin", "cat", Stdio::piped(), stdout);
        let mut stdin = tool.take_stdin().expect("stdin");
        // More than the pipe holds, so the writer meets a full pipe.
        let sent: Vec<u8> = (0..(12 * CHUNK + 12345)).map(|i| (i % 251) as u8).collect();
        let writing = {
            let sent = sent.clone();
            tokio::spawn(async move {
                stdin.write(&sent).await.expect("written");
                // Dropped: cat sees the end of its input.
                drop(stdin);
            })
        };
        let mut got = Vec::new();
        loop {
            let c = chunks.next().await.expect("read");
            got.extend_from_slice(&c);
            if c.len() < CHUNK {
                break;
            }
        }
        writing.await.expect("writer");
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes changed on the way");
        assert!(chunks.next().await.expect("end").is_empty());
        tool.kill().await;
    }

    #[tokio::test]
    async fn a_tool_stops_when_nobody_reads_its_stdout() {
        let (stdout, mut chunks) = chunked_stdout().expect("pipe");
        let mut tool = start("/usr/bin", "yes", Stdio::null(), stdout);
        assert_eq!(
            chunks.next().await.expect("read").len(),
            crate::frames::CHUNK
        );
        drop(chunks);
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), tool.child.wait())
            .await
            .expect("yes ended once its reader was gone")
            .expect("status");
        assert!(
            !status.success(),
            "yes ends only by a broken pipe: {status}"
        );
    }
}
