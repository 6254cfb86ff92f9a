//! Running processors: commands the operator configured, never ones a client sent.
//!
//! A processor is a program and its arguments (split like a shell would, but run without one
//! unless the command itself asks for a shell, e.g. `sh -c '…'`). Each run gets the bytes on stdin,
//! what they are in `FERRY_*` environment variables, a fresh working directory, and a process group
//! of its own, so a timeout, a cancel or its own exit leaves nothing of it running. Its stdout is
//! the result; a non-zero exit, a timeout or a failure to start is an error with the tail of its
//! stderr. At most `concurrency` runs happen at once across all uploads.
//!
//! The environment is not inherited beyond `PATH`, `HOME`, `LANG`, `LC_ALL`, `TMPDIR` and `USER`:
//! the server's credentials (tokens, S3 keys, the webhook secret) never reach a processor.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::events::ProcessorKind;
use ferry_store::ByteStream;
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// A configured processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorSpec {
    pub kind: ProcessorKind,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Overrides the server's processing timeout.
    pub timeout: Option<Duration>,
}

/// Parses `NAME=COMMAND`.
pub fn parse_processor(arg: &str, kind: ProcessorKind) -> Result<(String, ProcessorSpec), String> {
    let (name, command) =
        arg.split_once('=').ok_or_else(|| format!("{arg:?} is not NAME=COMMAND (for example wc=\"wc -w\")"))?;
    let name = name.trim();
    Ok((name.to_owned(), ProcessorSpec::new(name, command, kind, None)?))
}

impl ProcessorSpec {
    pub fn new(
        name: &str,
        command: &str,
        kind: ProcessorKind,
        timeout: Option<Duration>,
    ) -> Result<ProcessorSpec, String> {
        let name_ok = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !name_ok {
            return Err(format!("processor name {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"));
        }
        let argv =
            shlex::split(command).ok_or_else(|| format!("processor {name}: cannot split {command:?} into words"))?;
        if argv.is_empty() {
            return Err(format!("processor {name}: the command is empty"));
        }
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(format!("processor {name}: the timeout must be longer than zero"));
        }
        Ok(ProcessorSpec { kind, argv, timeout })
    }
}

/// What a run is given on stdin.
pub enum Input {
    Stream(ByteStream),
    File(std::fs::File),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// Stdout, cut to the limit the caller gave.
    pub output: String,
    pub truncated: bool,
    pub error: Option<String>,
}

impl Outcome {
    pub(crate) fn failed(error: String) -> Outcome {
        Outcome { ok: false, output: String::new(), truncated: false, error: Some(error) }
    }
}

const STDERR_TAIL: usize = 2048;
const PASSED_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER"];

pub struct Runner {
    slots: Semaphore,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    /// Runs queued or running, and their cancel token, by upload; an upload leaves the map when
    /// its last run ends, so the map holds only uploads with work.
    work: Arc<Mutex<HashMap<String, Work>>>,
    /// Process groups of the runs under way.
    groups: Mutex<std::collections::HashSet<i32>>,
}

impl Runner {
    pub fn new(concurrency: usize, timeout: Duration, clock: Arc<dyn Clock>) -> Runner {
        Runner {
            slots: Semaphore::new(concurrency.max(1)),
            timeout,
            clock,
            work: Arc::default(),
            groups: Mutex::default(),
        }
    }

    /// Kills every run under way, with everything it started (the server is stopping).
    pub fn kill_all(&self) {
        for g in self.groups.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(g), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Counts a run of the upload as pending until the guard is dropped.
    pub fn track(&self, upload_id: &str) -> Pending {
        self.work.lock().unwrap_or_else(|p| p.into_inner()).entry(upload_id.to_owned()).or_default().runs += 1;
        Pending { upload_id: upload_id.to_owned(), work: Arc::clone(&self.work) }
    }

    /// Whether a run of the upload is queued or running.
    pub fn busy(&self, upload_id: &str) -> bool {
        self.work.lock().unwrap_or_else(|p| p.into_inner()).contains_key(upload_id)
    }

    fn token(&self, upload_id: &str) -> CancellationToken {
        let mut work = self.work.lock().unwrap_or_else(|p| p.into_inner());
        work.entry(upload_id.to_owned()).or_default().token.clone()
    }

    /// Stops every run of the upload, queued or running. (A run that starts later finds the
    /// upload cancelled when it reads its session.)
    pub fn cancel(&self, upload_id: &str) {
        if let Some(w) = self.work.lock().unwrap_or_else(|p| p.into_inner()).get(upload_id) {
            w.token.cancel();
        }
    }

    /// Waits for a free slot; `None` if the upload is cancelled first.
    pub async fn slot(&self, upload_id: &str) -> Option<Slot<'_>> {
        let token = self.token(upload_id);
        tokio::select! {
            biased;
            _ = token.cancelled() => None,
            permit = self.slots.acquire() => permit.ok().map(|permit| Slot { _permit: permit, token }),
        }
    }

    /// Runs `spec` on `input` with `env` (names and values), keeping at most `max_output` bytes of
    /// stdout. `None` if the upload was cancelled meanwhile (the run was killed).
    pub async fn run(
        &self,
        slot: &Slot<'_>,
        spec: &ProcessorSpec,
        env: &[(&str, String)],
        input: Input,
        max_output: usize,
    ) -> Option<Outcome> {
        let workdir = match tempfile::Builder::new().prefix("ferry-proc-").tempdir() {
            Ok(d) => d,
            Err(e) => return Some(Outcome::failed(format!("cannot make a working directory: {e}"))),
        };
        let mut cmd = tokio::process::Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..])
            .current_dir(workdir.path())
            .env_clear()
            .envs(PASSED_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let stream = match input {
            Input::File(f) => {
                cmd.stdin(Stdio::from(f));
                None
            }
            Input::Stream(s) => {
                cmd.stdin(Stdio::piped());
                Some(s)
            }
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Some(Outcome::failed(format!("cannot start {:?}: {e}", spec.argv[0]))),
        };
        let group = child.id().and_then(|id| i32::try_from(id).ok());
        if let Some(g) = group {
            self.groups.lock().unwrap_or_else(|p| p.into_inner()).insert(g);
        }
        let _forget = Forget { groups: &self.groups, group };
        let group = group.map(nix::unistd::Pid::from_raw);
        let kill_group = move || {
            if let Some(g) = group {
                // ESRCH: everything in it is gone already.
                let _ = nix::sys::signal::killpg(g, nix::sys::signal::Signal::SIGKILL);
            }
        };
        let stdin = child.stdin.take();
        let feed = async move {
            let (Some(mut stdin), Some(mut stream)) = (stdin, stream) else { return Ok(()) };
            while let Some(chunk) = stream.next().await {
                match stdin.write_all(&chunk?).await {
                    // The processor need not read everything it is given.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    other => other?,
                }
            }
            stdin.shutdown().await
        };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let collect = async move {
            let (out, err) =
                tokio::join!(read_capped(stdout, max_output, false), read_capped(stderr, STDERR_TAIL, true));
            (out, err)
        };
        let timeout = spec.timeout.unwrap_or(self.timeout);
        // Once the processor exits, whatever it left running in the background goes with it, so
        // no stray holder of its pipes keeps this run open.
        let waited = async {
            let status = child.wait().await;
            kill_group();
            status
        };
        let run = async { tokio::join!(feed, waited, collect) };
        let (fed, status, ((out, truncated), (err, _))) = tokio::select! {
            r = run => r,
            _ = self.clock.sleep(timeout) => {
                kill_group();
                return Some(Outcome::failed(format!("timed out after {}", humantime::format_duration(timeout))));
            }
            _ = slot.token.cancelled() => {
                kill_group();
                return None;
            }
        };
        let stderr_tail = String::from_utf8_lossy(&err).trim().to_owned();
        let with_stderr = |what: String| {
            if stderr_tail.is_empty() { what } else { format!("{what}: {stderr_tail}") }
        };
        let status = match status {
            Ok(s) => s,
            Err(e) => return Some(Outcome::failed(format!("cannot wait for the processor: {e}"))),
        };
        if !status.success() {
            let what = match status.code() {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_owned(),
            };
            return Some(Outcome::failed(with_stderr(what)));
        }
        if let Err(e) = fed {
            return Some(Outcome::failed(format!("could not hand the input over: {e}")));
        }
        let output = String::from_utf8_lossy(&out).into_owned();
        Some(Outcome { ok: true, output, truncated, error: None })
    }
}

/// Takes a run's process group off the list when the run ends, however it ends.
struct Forget<'a> {
    groups: &'a Mutex<std::collections::HashSet<i32>>,
    group: Option<i32>,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.group {
            self.groups.lock().unwrap_or_else(|p| p.into_inner()).remove(&g);
        }
    }
}

#[derive(Default)]
struct Work {
    runs: usize,
    token: CancellationToken,
}

/// A run queued or running; see [`Runner::track`].
pub struct Pending {
    upload_id: String,
    work: Arc<Mutex<HashMap<String, Work>>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut map = self.work.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = map.get_mut(&self.upload_id) {
            w.runs = w.runs.saturating_sub(1);
            if w.runs == 0 {
                map.remove(&self.upload_id);
            }
        }
    }
}

/// A held processing slot; dropping it frees the slot.
pub struct Slot<'a> {
    _permit: SemaphorePermit<'a>,
    token: CancellationToken,
}

/// Reads a pipe to its end, keeping the first (or, with `tail`, the last) `max` bytes; says
/// whether anything was dropped.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>, max: usize, tail: bool) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else { return (Vec::new(), false) };
    let mut kept = Vec::new();
    let mut dropped = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > max {
            dropped = true;
            if tail {
                kept.drain(..kept.len() - max);
            } else {
                kept.truncate(max);
            }
        }
    }
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processor_arguments() {
        let (name, spec) = parse_processor("wc=wc -w", ProcessorKind::Part).unwrap();
        assert_eq!((name.as_str(), spec.argv.as_slice()), ("wc", &["wc".to_owned(), "-w".to_owned()][..]));
        let (_, spec) = parse_processor(r#"s=sh -c 'tr a-z A-Z | head -c 5'"#, ProcessorKind::Complete).unwrap();
        assert_eq!(spec.argv, ["sh", "-c", "tr a-z A-Z | head -c 5"]);
        assert_eq!(spec.kind, ProcessorKind::Complete);
        for bad in ["nocommand", "=cat", "a b=cat", "x=", "x='unclosed", &format!("{}=cat", "n".repeat(65))] {
            assert!(parse_processor(bad, ProcessorKind::Part).is_err(), "{bad}");
        }
    }
}
