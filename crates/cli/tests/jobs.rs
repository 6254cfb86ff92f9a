//! Workers and jobs on a real `ferry serve`: two `ferry worker` processes and `ferry submit`
//! clients in one room, all on loopback. A job runs end to end (input uploaded, progress and log
//! lines streamed over the data channel, outputs uploaded, downloaded and verified, recorded in
//! the room's manifest); pause, resume and cancel reach the command's process (its state is read
//! from /proc); a worker at its limit answers `busy`; two workers that finish at the same moment
//! both land in the manifest, fifty times over. Every test runs on the embedded store and on an
//! S3 store (s3s-fs).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The transports the client announced for the input, with their rules, in order.
fn input_transports(lines: &[Value]) -> Vec<(&str, &str)> {
    lines
        .iter()
        .filter(|l| l["type"] == "transport")
        .map(|l| (l["transport"].as_str().unwrap(), l["reason"]["rule"].as_str().unwrap()))
        .collect()
}

#[derive(Clone, Copy)]
enum Store {
    Embedded,
    S3,
}

/// A server on `store`; the S3 server (if any) outlives it.
struct Servers {
    srv: TestServer,
    _s3: Option<common::s3::S3Server>,
}

fn servers(store: Store) -> Servers {
    match store {
        Store::Embedded => Servers { srv: TestServer::start(&[]), _s3: None },
        Store::S3 => {
            let s3 = common::s3::S3Server::s3s_fs();
            Servers { srv: TestServer::start_s3(&s3.endpoint, "jobs", &[]), _s3: Some(s3) }
        }
    }
}

/// Each named test, once per store.
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Store::Embedded).await
                }
            )*
        }
        mod s3_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Store::S3).await
                }
            )*
        }
    };
}

on_both_stores!(
    a_job_runs_end_to_end_and_its_outputs_come_back_verified,
    pause_resume_and_cancel_reach_the_command_and_a_busy_worker_says_so,
    the_p_and_r_keys_pause_and_resume_a_job_from_the_terminal,
    a_busy_worker_passes_the_job_on_to_a_free_one,
    submit_in_the_background_of_a_terminal_is_not_stopped,
    a_worker_killed_mid_job_is_reported_as_failed,
    a_job_outlives_its_client_and_attach_gets_the_result,
    with_the_data_channel_blocked_a_job_still_completes,
    two_workers_finishing_at_once_both_land_in_the_manifest,
);

/// The job's command: reports progress as JSON lines, logs a plain line, and writes two outputs
/// (one in a subdirectory). With a third argument `slow` it takes two seconds first; with
/// `barrier DIR` it waits until two jobs have arrived in DIR (30 s at most), so both end at the
/// same moment; with `linger FILE` it writes its pid there, reports once and then waits silently
/// (ten minutes at most); with any other, it writes its pid there and loops until killed,
/// reporting progress.
const SCRIPT: &str = r#"#!/bin/sh
in="$1"; out="$2"
echo '{"pct": 0}'
echo "reading $(wc -c < "$in" | tr -d ' ') bytes"
if [ "$3" = "slow" ]; then sleep 2; fi
if [ "$3" = "barrier" ]; then
  touch "$4/$$"
  n=0
  while [ "$(ls "$4" | wc -l)" -lt 2 ]; do
    n=$((n + 1)); if [ $n -gt 3000 ]; then echo "the other job never came" >&2; exit 3; fi
    sleep 0.01
  done
elif [ "$3" = "linger" ]; then
  echo $$ > "$4"
  echo '{"tick": 1}'
  sleep 600
elif [ -n "$3" ] && [ "$3" != "slow" ]; then
  echo $$ > "$3"
  i=0
  while true; do i=$((i + 1)); echo "{\"tick\": $i}"; sleep 0.1; done
fi
wc -c < "$in" | tr -d ' ' > "$out/count.txt"
mkdir -p "$out/sub"
sha256sum "$in" | cut -d' ' -f1 > "$out/sub/digest.txt"
echo '{"pct": 100}'
"#;

fn worker(srv: &TestServer, dir: &Path, name: &str, jobs: &str) -> tokio::process::Child {
    worker_at(&srv.url, dir, name, jobs)
}

/// A worker connected to the server (or instance) at `url`.
fn worker_at(url: &str, dir: &Path, name: &str, jobs: &str) -> tokio::process::Child {
    let script = dir.join("job.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    let exec = format!("sh {} {{input}} {{output_dir}}", script.display());
    let work = dir.join(format!("work-{name}"));
    let args = ["worker", "--room", "lab", "--name", name, "--jobs", jobs, "--exec", &exec, "--kill-grace", "2s"];
    let mut cmd = ferry(url, &dir.join(format!("state-{name}")), &args);
    let log = std::fs::File::create(dir.join(format!("worker-{name}.log"))).unwrap();
    cmd.arg("--work-dir").arg(work).env("FERRY_LOG", "ferry_jobs=debug,warn").stdout(Stdio::null()).stderr(log);
    cmd.spawn().unwrap()
}

/// `ferry submit … -- job_args` (the server flags go before the `--`).
fn submit(srv: &TestServer, state: &Path, args: &[&str], job_args: &[&str]) -> tokio::process::Command {
    submit_at(&srv.url, state, args, job_args)
}

fn submit_at(url: &str, state: &Path, args: &[&str], job_args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.arg("submit")
        .args(args)
        .args(["--room", "lab", "--json", "--server", url, "--token", TOKEN])
        .arg("--")
        .args(job_args)
        .env("FERRY_STATE_DIR", state)
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn a_job_runs_end_to_end_and_its_outputs_come_back_verified(store: Store) {
    let Servers { srv, _s3 } = servers(store);
    let dir = tempfile::tempdir().unwrap();
    let _w1 = worker(&srv, dir.path(), "w1", "1");
    let _w2 = worker(&srv, dir.path(), "w2", "1");
    let bytes = data(3 * 1024 * 1024 + 5, 9);
    let input = write_file(dir.path(), "frames.bin", &bytes);
    let down = dir.path().join("down");
    let args = ["--to", "w2", "--job-id", "job-e2e", "--download", down.to_str().unwrap(), input.to_str().unwrap()];
    let (ok, lines, err) = run_json(submit(&srv, &dir.path().join("state"), &args, &[])).await;
    assert!(ok, "{err}");
    let r = result_of(&lines);
    assert_eq!(r["status"], "succeeded", "{r}");
    let progress: Vec<&Value> = lines.iter().filter(|l| l["type"] == "progress").map(|l| &l["data"]).collect();
    assert_eq!(progress, [&serde_json::json!({"pct": 0}), &serde_json::json!({"pct": 100})]);
    let logs: Vec<&str> = lines.iter().filter(|l| l["type"] == "log").filter_map(|l| l["line"].as_str()).collect();
    assert_eq!(logs, [format!("reading {} bytes", bytes.len())]);
    assert!(lines.iter().any(|l| l["type"] == "accepted" && l["worker"] == "w2"));
    // 3 MiB is below the small-file limit: the input went to the server over a data channel.
    assert_eq!(input_transports(&lines), [("data_channel", "small")]);
    let stored = lines.iter().find(|l| l["type"] == "input").unwrap();
    assert_eq!(stored["key"], "rooms/lab/inputs/job-e2e/frames.bin");
    assert_eq!(stored["sha256"], sha256_hex(&bytes));

    let digest = sha256_hex(&bytes);
    assert_eq!(std::fs::read_to_string(down.join("count.txt")).unwrap().trim(), bytes.len().to_string());
    assert_eq!(std::fs::read_to_string(down.join("sub/digest.txt")).unwrap().trim(), digest);
    let keys: Vec<&str> = r["outputs"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["rooms/lab/results/job-e2e/count.txt", "rooms/lab/results/job-e2e/sub/digest.txt"]);

    let manifest: Value = srv.get("/rooms/lab/manifest").await.json().await.unwrap();
    let entry = &manifest["entries"][0];
    assert_eq!((entry["job_id"].as_str(), entry["worker"].as_str()), (Some("job-e2e"), Some("w2")));
    assert_eq!(entry["inputs"][0], "rooms/lab/inputs/job-e2e/frames.bin");
    assert_eq!(entry["outputs"], r["outputs"]);
}

/// The state letter of a process (`T` when stopped), or `None` once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
}

/// Alive and not stopped: running, sleeping, or briefly in disk wait (`D`) on a busy machine.
fn running(state: Option<char>) -> bool {
    state.is_some_and(|c| !"TtZX".contains(c))
}

/// Waits for `cond`; on a timeout, the failure shows the workers' logs (in `dir`).
async fn wait_for(dir: &Path, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        if tokio::time::Instant::now() >= deadline {
            let logs: String = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("worker-"))
                .map(|e| format!("{}:\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default()))
                .collect();
            panic!("timed out waiting for {what}; the workers' logs:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn job_cmd(srv: &TestServer, dir: &Path, verb: &str, id: &str) -> tokio::process::Command {
    job_cmd_at(&srv.url, dir, verb, id)
}

fn job_cmd_at(url: &str, dir: &Path, verb: &str, id: &str) -> tokio::process::Command {
    ferry(url, &dir.join("state"), &["job", verb, id, "--room", "lab"])
}

async fn pause_resume_and_cancel_reach_the_command_and_a_busy_worker_says_so(store: Store) {
    let Servers { srv, _s3 } = servers(store);
    let dir = tempfile::tempdir().unwrap();
    let _w = worker(&srv, dir.path(), "solo", "1");
    let input = write_file(dir.path(), "in.txt", b"hello");
    let pid_file = dir.path().join("pid");
    let state = dir.path().join("state");
    let args = ["--to", "solo", "--job-id", "long", input.to_str().unwrap()];
    let (job, lines, mut seen) = run_until(submit(&srv, &state, &args, &[pid_file.to_str().unwrap()]), |v| {
        v["type"] == "progress" && v["data"]["tick"].is_number()
    })
    .await;
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(running(proc_state(pid)), "running: {:?}", proc_state(pid));

    // One job at a time: a second one is refused with `busy`.
    let other = ["--to", "solo", "--job-id", "second", input.to_str().unwrap()];
    let (ok, _, err) = run_json(submit(&srv, &state, &other, &[])).await;
    assert!(!ok && err.contains("busy"), "{err}");

    let (ok, _, err) = run_json(job_cmd(&srv, dir.path(), "pause", "long")).await;
    assert!(ok, "{err}");
    wait_for(dir.path(), "the command to stop", || proc_state(pid) == Some('T')).await;
    let (ok, _, err) = run_json(job_cmd(&srv, dir.path(), "resume", "long")).await;
    assert!(ok, "{err}");
    wait_for(dir.path(), "the command to run again", || running(proc_state(pid))).await;
    let (ok, _, err) = run_json(job_cmd(&srv, dir.path(), "cancel", "long")).await;
    assert!(ok, "{err}");
    wait_for(dir.path(), "the command to end", || proc_state(pid).is_none_or(|s| s == 'Z')).await;

    assert!(!finish(job, lines, &mut seen).await, "a cancelled job is not a success");
    let r = result_of(&seen);
    assert_eq!(r["status"], "cancelled");
    let states: Vec<&str> = seen.iter().filter(|l| l["type"] == "state").filter_map(|l| l["state"].as_str()).collect();
    for s in ["running", "paused", "cancelling"] {
        assert!(states.contains(&s), "{s} in {states:?}");
    }
    let (ok, _, err) = run_json(job_cmd(&srv, dir.path(), "pause", "long")).await;
    assert!(!ok && err.contains("no running job"), "{err}");
    let manifest: Value = srv.get("/rooms/lab/manifest").await.json().await.unwrap();
    assert_eq!(manifest["entries"][0]["status"], "cancelled");
}

/// `ferry submit` on a terminal (a pty here): `p` and `r` reach the command as SIGSTOP/SIGCONT.
async fn the_p_and_r_keys_pause_and_resume_a_job_from_the_terminal(store: Store) {
    use std::io::Write;
    let Servers { srv, _s3 } = servers(store);
    let dir = tempfile::tempdir().unwrap();
    let _w = worker(&srv, dir.path(), "solo", "1");
    let input = write_file(dir.path(), "in.txt", b"hello");
    let pid_file = dir.path().join("pid");
    let pty = nix::pty::openpty(None, None).unwrap();
    let args = ["--to", "solo", "--job-id", "keyed", input.to_str().unwrap()];
    let mut cmd = submit(&srv, &dir.path().join("state"), &args, &[pid_file.to_str().unwrap()]);
    cmd.stdin(Stdio::from(pty.slave));
    let (job, lines, mut seen) = run_until(cmd, |v| v["type"] == "progress" && v["data"]["tick"].is_number()).await;
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let mut terminal = std::fs::File::from(pty.master);
    terminal.write_all(b"p").unwrap();
    wait_for(dir.path(), "the command to stop", || proc_state(pid) == Some('T')).await;
    terminal.write_all(b"x").unwrap(); // not a command key: ignored
    terminal.write_all(b"r").unwrap();
    wait_for(dir.path(), "the command to run again", || running(proc_state(pid))).await;
    let (ok, _, err) = run_json(job_cmd(&srv, dir.path(), "cancel", "keyed")).await;
    assert!(ok, "{err}");
    assert!(!finish(job, lines, &mut seen).await);
    let states: Vec<&str> = seen.iter().filter(|l| l["type"] == "state").filter_map(|l| l["state"].as_str()).collect();
    let paused = states.iter().position(|s| *s == "paused").expect("paused");
    assert!(states[paused..].contains(&"running"), "running again after the pause: {states:?}");
    assert_eq!(result_of(&seen)["status"], "cancelled");
}

/// `ferry submit … &` from a shell on a terminal: a background process that touched the terminal
/// would be stopped (SIGTTOU) and the job never followed. The terminal here is a pty made the
/// controlling terminal of a new session whose shell has job control on.
async fn submit_in_the_background_of_a_terminal_is_not_stopped(store: Store) {
    let Servers { srv, _s3 } = servers(store);
    let dir = tempfile::tempdir().unwrap();
    let _w = worker(&srv, dir.path(), "w1", "1");
    let input = write_file(dir.path(), "in.txt", b"in the background");
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut cmd = tokio::process::Command::new("setsid");
    cmd.args(["--ctty", "--wait", "sh", "-c", "set -m; \"$@\" & wait $!", "sh", env!("CARGO_BIN_EXE_ferry"), "submit"])
        .args(["--job-id", "behind", input.to_str().unwrap()])
        .args(["--room", "lab", "--json", "--server", &srv.url, "--token", TOKEN])
        .env("FERRY_STATE_DIR", dir.path().join("state"))
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::from(pty.slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let (ok, lines, err) = tokio::time::timeout(Duration::from_secs(60), run_json(cmd))
        .await
        .expect("submit in the background was stopped");
    assert!(ok, "{err}");
    assert_eq!(result_of(&lines)["status"], "succeeded");
}

/// Without `--to`, a job goes to whichever worker is free; with every worker busy, the client
/// says so.
async fn a_busy_worker_passes_the_job_on_to_a_free_one(store: Store) {
    let Servers { srv, _s3 } = servers(store);
    let dir = tempfile::tempdir().unwrap();
    let _w1 = worker(&srv, dir.path(), "w1", "1");
    let _w2 = worker(&srv, dir.path(), "w2", "1");
    let input = write_file(dir.path(), "in.txt", b"hello");
    let state = dir.path().join("state");
    let mut running = Vec::new();
    let mut workers = Vec::new();
    for job in ["first", "second"] {
        let pid_file = dir.path().join(format!("pid-{job}"));
        let args = ["--job-id", job, input.to_str().unwrap()];
        let (child, lines, seen) = run_until(submit(&srv, &state, &args, &[pid_file.to_str().unwrap()]), |v| {
            v["type"] == "progress" && v["data"]["tick"].is_number()
        })
        .await;
        let accepted = seen.iter().find(|l| l["type"] == "accepted").unwrap();
        workers.push(accepted["worker"].as_str().unwrap().to_owned());
        running.push((child, lines, seen));
    }
    workers.sort();
    assert_eq!(workers, ["w1", "w2"], "one job on each worker");
    let args = ["--job-id", "third", input.to_str().unwrap()];
    let (ok, _, err) = run_json(submit(&srv, &state, &args, &[])).await;
    assert!(!ok && err.contains("every worker in the room is busy"), "{err}");
    for (job, (child, lines, mut seen)) in ["first", "second"].into_iter().zip(running) {
        let (ok, _, err) = run_json(job_cmd(&srv, dir.path(), "cancel", job)).await;
        assert!(ok, "{err}");
        assert!(!finish(child, lines, &mut seen).await);
        assert_eq!(result_of(&seen)["status"], "cancelled");
    }
}

async fn a_worker_killed_mid_job_is_reported_as_failed(store: Store) {
    let Servers { srv, _s3 } = servers(store);
    let dir = tempfile::tempdir().unwrap();
    let mut w = worker(&srv, dir.path(), "doomed", "1");
    let input = write_file(dir.path(), "in.txt", b"hello");
    let pid_file = dir.path().join("pid");
    let args = ["--to", "doomed", "--job-id", "doomed-job", input.to_str().unwrap()];
    // A command that no longer writes: an orphan that a closed stdout would not end.
    let (job, lines, mut seen) =
        run_until(submit(&srv, &dir.path().join("state"), &args, &["linger", pid_file.to_str().unwrap()]), |v| {
            v["type"] == "progress" && v["data"]["tick"].is_number()
        })
        .await;
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    w.start_kill().unwrap();
    w.wait().await.unwrap();
    assert!(!finish(job, lines, &mut seen).await, "the client exits with an error");
    let r = result_of(&seen);
    assert_eq!((r["status"].as_str(), r["job_id"].as_str()), (Some("failed"), Some("doomed-job")), "{r}");
    assert!(r["message"].as_str().unwrap().contains("doomed went away"), "{r}");

    // The kill -9 left the command running, orphaned, and nothing in the manifest.
    assert!(running(proc_state(pid)), "the orphan: {:?}", proc_state(pid));
    let manifest: Value = srv.get("/rooms/lab/manifest").await.json().await.unwrap();
    assert!(manifest["entries"].as_array().is_none_or(|e| e.is_empty()), "{manifest}");
    // A worker started on the same work dir ends it and records the job as failed, so attach
    // learns the outcome instead of waiting.
    let _again = worker(&srv, dir.path(), "doomed", "1");
    wait_for(dir.path(), "the orphaned command to end", || proc_state(pid).is_none_or(|s| s == 'Z')).await;
    let attach = ["job", "attach", "doomed-job", "--room", "lab", "--json", "--wait", "30s"];
    let (ok, lines, err) = run_json(ferry(&srv.url, &dir.path().join("state"), &attach)).await;
    assert!(!ok, "a failed job is not a success");
    assert_eq!(result_of(&lines)["status"], "failed", "{err}");
    assert!(!dir.path().join("work-doomed").join("doomed-job").exists(), "the job's dir is removed");
}

async fn a_job_outlives_its_client_and_attach_gets_the_result(store: Store) {
    let Servers { srv, _s3 } = servers(store);
    let dir = tempfile::tempdir().unwrap();
    let _w = worker(&srv, dir.path(), "w1", "1");
    let bytes = b"some input".to_vec();
    let input = write_file(dir.path(), "in.txt", &bytes);
    let state = dir.path().join("state");
    // With the limits this low the 10-byte input is a large file: HTTP parts.
    let args =
        ["--to", "w1", "--job-id", "orphan", "--small-below", "2", "--large-above", "4", input.to_str().unwrap()];
    let (mut client, _lines, seen) =
        run_until(submit(&srv, &state, &args, &["slow"]), |v| v["type"] == "progress").await;
    assert_eq!(input_transports(&seen), [("http_parts", "large")]);
    client.start_kill().unwrap();
    client.wait().await.unwrap();

    let down = dir.path().join("down");
    let attach = ["job", "attach", "orphan", "--room", "lab", "--json", "--download", down.to_str().unwrap()];
    let (ok, lines, err) = run_json(ferry(&srv.url, &state, &attach)).await;
    assert!(ok, "{err}");
    let r = result_of(&lines);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(std::fs::read_to_string(down.join("count.txt")).unwrap().trim(), bytes.len().to_string());
    let unknown = ["job", "attach", "nobody", "--room", "lab", "--wait", "1s"];
    let (ok, _, err) = run_json(ferry(&srv.url, &state, &unknown)).await;
    assert!(!ok && err.contains("no result"), "{err}");
}

/// The client offers only an IPv6 loopback candidate and the worker only IPv4: no ICE pair can
/// form, so there is no data channel. The job still runs and its result arrives through the
/// room's manifest.
async fn with_the_data_channel_blocked_a_job_still_completes(store: Store) {
    let Servers { srv, _s3 } = servers(store);
    let dir = tempfile::tempdir().unwrap();
    let _w = worker(&srv, dir.path(), "w1", "1");
    let bytes = data(100_000, 12);
    let input = write_file(dir.path(), "in.bin", &bytes);
    let down = dir.path().join("down");
    let args = [
        "--job-id",
        "blocked",
        "--bind",
        "::1",
        "--wait",
        "5s",
        "--connect-timeout",
        "2s",
        "--download",
        down.to_str().unwrap(),
        input.to_str().unwrap(),
    ];
    let (ok, lines, err) = run_json(submit(&srv, &dir.path().join("state"), &args, &[])).await;
    assert!(ok, "{err}");
    // The input, small, was meant for a data channel too, and went as HTTP parts instead.
    assert_eq!(input_transports(&lines), [("data_channel", "small"), ("http_parts", "peer_unreachable")]);
    assert!(lines.iter().any(|l| l["type"] == "fallback"), "{lines:?}");
    assert!(!lines.iter().any(|l| l["type"] == "progress"), "no live progress without the channel");
    assert_eq!(result_of(&lines)["status"], "succeeded");
    assert_eq!(std::fs::read_to_string(down.join("sub/digest.txt")).unwrap().trim(), sha256_hex(&bytes));
}

/// Two workers whose jobs end at the same moment write the room's manifest at once, fifty rounds
/// in a row: every job's entry must be there at the end.
async fn two_workers_finishing_at_once_both_land_in_the_manifest(store: Store) {
    const ROUNDS: usize = 50;
    let Servers { srv, _s3 } = servers(store);
    let dir = tempfile::tempdir().unwrap();
    let _w1 = worker(&srv, dir.path(), "w1", "1");
    let _w2 = worker(&srv, dir.path(), "w2", "1");
    let state = dir.path().join("state");
    // One input already in the store for every job: the race is at the end, not at the start.
    let input = write_file(dir.path(), "shared.txt", b"the same input for every job");
    let put = ["put", input.to_str().unwrap(), "--key", "rooms/lab/inputs/shared.txt", "--json"];
    let (ok, _, err) = run_json(ferry(&srv.url, &state, &put)).await;
    assert!(ok, "{err}");
    for round in 0..ROUNDS {
        let barrier = dir.path().join(format!("barrier-{round}"));
        std::fs::create_dir(&barrier).unwrap();
        let barrier = barrier.to_str().unwrap();
        let job = |w: &str| {
            let id = format!("r{round}-{w}");
            let args = ["--to", w, "--job-id", &id, "rooms/lab/inputs/shared.txt"];
            run_json(submit(&srv, &state, &args, &["barrier", barrier]))
        };
        let ((ok1, lines1, err1), (ok2, lines2, err2)) = tokio::join!(job("w1"), job("w2"));
        assert!(ok1 && ok2, "round {round}: {err1} {err2}");
        assert_eq!(
            (result_of(&lines1)["status"].as_str(), result_of(&lines2)["status"].as_str()),
            (Some("succeeded"), Some("succeeded"))
        );
    }
    let manifest: Value = srv.get("/rooms/lab/manifest").await.json().await.unwrap();
    let mut ids: Vec<&str> =
        manifest["entries"].as_array().unwrap().iter().map(|e| e["job_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut want: Vec<String> = (0..ROUNDS).flat_map(|r| [format!("r{r}-w1"), format!("r{r}-w2")]).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "entries lost or doubled");
    // How often a worker lost the race and wrote again, for the record.
    let retried: usize = ["w1", "w2"]
        .iter()
        .map(|w| std::fs::read_to_string(dir.path().join(format!("worker-{w}.log"))).unwrap())
        .map(|log| {
            log.lines().filter(|l| l.contains("recorded in the room's manifest") && !l.contains("lost_races=0")).count()
        })
        .sum();
    eprintln!("{} jobs in {ROUNDS} rounds; {retried} manifest writes lost a race and were retried", 2 * ROUNDS);
}

/// Several instances on one bus: the worker on one, its client on another, and `ferry job` on a
/// third; the job is placed, steered and recorded as on one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_crosses_instances_and_is_paused_resumed_and_cancelled_from_a_third() {
    let cluster = common::cluster::Cluster::start(&[]);
    let urls: Vec<String> = cluster.instances.iter().map(|i| i.url.clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let _w = worker_at(&urls[0], dir.path(), "far", "1");
    let input = write_file(dir.path(), "in.txt", b"hello across instances");
    let pid_file = dir.path().join("pid");
    let state = dir.path().join("state");
    let args = ["--to", "far", "--job-id", "crossing", input.to_str().unwrap()];
    let (job, lines, mut seen) = run_until(submit_at(&urls[1], &state, &args, &[pid_file.to_str().unwrap()]), |v| {
        v["type"] == "progress" && v["data"]["tick"].is_number()
    })
    .await;
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let (ok, _, err) = run_json(job_cmd_at(&urls[2], dir.path(), "pause", "crossing")).await;
    assert!(ok, "{err}");
    wait_for(dir.path(), "the command to stop", || proc_state(pid) == Some('T')).await;
    let (ok, _, err) = run_json(job_cmd_at(&urls[2], dir.path(), "resume", "crossing")).await;
    assert!(ok, "{err}");
    wait_for(dir.path(), "the command to run again", || running(proc_state(pid))).await;
    let (ok, _, err) = run_json(job_cmd_at(&urls[2], dir.path(), "cancel", "crossing")).await;
    assert!(ok, "{err}");
    wait_for(dir.path(), "the command to end", || proc_state(pid).is_none_or(|s| s == 'Z')).await;
    assert!(!finish(job, lines, &mut seen).await, "a cancelled job is not a success");
    assert_eq!(result_of(&seen)["status"], "cancelled");
    let states: Vec<&str> = seen.iter().filter(|l| l["type"] == "state").filter_map(|l| l["state"].as_str()).collect();
    for s in ["running", "paused", "cancelling"] {
        assert!(states.contains(&s), "{s} in {states:?}");
    }
    let manifest: Value = cluster.instances[2].get("/rooms/lab/manifest").await.json().await.unwrap();
    assert_eq!(manifest["entries"][0]["status"], "cancelled");
}

/// Two workers on two instances finishing at the same moment, 50 times, with the manifest in an
/// S3-compatible store whose conditional writes are not atomic (s3s-fs): every result once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_two_instances_finishing_at_once_both_land_in_the_manifest() {
    const ROUNDS: usize = 50;
    let cluster = common::cluster::Cluster::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let _w1 = worker_at(&cluster.instances[0].url, dir.path(), "w1", "1");
    let _w2 = worker_at(&cluster.instances[1].url, dir.path(), "w2", "1");
    let state = dir.path().join("state");
    let url = cluster.url();
    let input = write_file(dir.path(), "shared.txt", b"the same input for every job");
    let put = ["put", input.to_str().unwrap(), "--key", "rooms/lab/inputs/shared.txt", "--json"];
    let (ok, _, err) = run_json(ferry(url, &state, &put)).await;
    assert!(ok, "{err}");
    for round in 0..ROUNDS {
        let barrier = dir.path().join(format!("barrier-{round}"));
        std::fs::create_dir(&barrier).unwrap();
        let barrier = barrier.to_str().unwrap();
        let job = |w: &str| {
            let id = format!("r{round}-{w}");
            let args = ["--to", w, "--job-id", &id, "rooms/lab/inputs/shared.txt"];
            run_json(submit_at(url, &state, &args, &["barrier", barrier]))
        };
        let ((ok1, _, err1), (ok2, _, err2)) = tokio::join!(job("w1"), job("w2"));
        assert!(ok1 && ok2, "round {round}: {err1} {err2}");
    }
    let manifest: Value = cluster.instances[2].get("/rooms/lab/manifest").await.json().await.unwrap();
    let mut ids: Vec<&str> =
        manifest["entries"].as_array().unwrap().iter().map(|e| e["job_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut want: Vec<String> = (0..ROUNDS).flat_map(|r| [format!("r{r}-w1"), format!("r{r}-w2")]).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "entries lost or doubled");
}

/// `kill -9` of the instance holding the worker's signaling while its job runs: the job reaches
/// its result, and the worker joins again through the balancer (to another instance) and takes
/// the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_the_death_of_its_workers_instance_and_the_worker_comes_back() {
    let mut cluster = common::cluster::Cluster::start(&[]);
    let url = cluster.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let connections = "ferry_signal_connections_total";
    let before = cluster.per_instance(connections).await;
    let _w = worker_at(&url, dir.path(), "roamer", "1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let held_by = loop {
        let now = cluster.per_instance(connections).await;
        if let Some(i) = (0..3).find(|i| now[*i] > before[*i]) {
            break i;
        }
        assert!(tokio::time::Instant::now() < deadline, "the worker did not join");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let input = write_file(dir.path(), "in.txt", b"through a dying instance");
    let state = dir.path().join("state");
    let args = ["--to", "roamer", "--job-id", "survivor", input.to_str().unwrap()];
    // Killed once the job runs and its client hears from it over their data channel.
    let (job, lines, mut seen) =
        run_until(submit_at(&url, &state, &args, &["slow"]), |v| v["type"] == "progress").await;
    cluster.instances[held_by].kill9();
    assert!(finish(job, lines, &mut seen).await, "the job finished: {:?}", seen.last());
    assert!(seen.iter().any(|l| l["type"] == "progress" && l["data"]["pct"] == 100), "progress after the kill");
    assert_eq!(result_of(&seen)["status"], "succeeded");
    // The worker is back in the room (through another instance) and takes the next job.
    let args = ["--to", "roamer", "--job-id", "after", "--wait", "60s", input.to_str().unwrap()];
    let (ok, lines, err) = run_json(submit_at(&url, &state, &args, &[])).await;
    assert!(ok, "{err}");
    assert_eq!(result_of(&lines)["status"], "succeeded");
}
