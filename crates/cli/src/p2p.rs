//! `ferry send` and `ferry recv`: a file peer to peer over a WebRTC data channel, the two sides
//! finding each other through a room of `ferry serve`'s signaling. Resumable: a sender that dies
//! and runs again sends only what the receiver does not already hold.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferry_core::frames::ReceiveLimits;
use ferry_core::signal::Role;
use ferry_core::signal::SERVER_PEER;
use ferry_core::transfer::Fault;
use ferry_rtc::connect::{self, Expect};
use ferry_rtc::signaling::{Signaling, SignalingError};
use ferry_rtc::transfer::{
    CONTROL_LABEL, FileSink, ReceiveEvent, SendEvent, TransferError, UPLOAD_LABELS, receive, send_file,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::{OutputArgs, ServerArgs, human_bytes, parse_size};

/// How long a receiver waits for a sender's channels once it has answered.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct PeerArgs {
    /// The signaling room both sides join.
    #[arg(long, env = "FERRY_ROOM")]
    room: String,

    /// This side's id in the room. Default: one the server makes up.
    #[arg(long)]
    peer_id: Option<String>,

    #[command(flatten)]
    net: crate::client::PeerNetArgs,

    #[command(flatten)]
    server: ServerArgs,

    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct SendArgs {
    /// The file to send.
    file: PathBuf,

    /// The peer to send to. Default: the first other peer in the room (waiting for one).
    /// `ferry` is the server itself: it stores the file as an object (see `ferry get`).
    #[arg(long)]
    to: Option<String>,

    /// The name the receiver stores it under. Default: the file's name.
    #[arg(long = "as")]
    name: Option<String>,

    /// Chunk payload size.
    #[arg(long, default_value = "48KiB", value_parser = parse_size)]
    chunk_size: u64,

    /// How long to wait for the other peer.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    wait: Duration,

    #[command(flatten)]
    peer: PeerArgs,
}

#[derive(Args)]
pub struct RecvArgs {
    /// Where received files go (partial ones wait in DIR/.ferry-recv until they are complete).
    #[arg(long, default_value = ".")]
    out: PathBuf,

    /// Keep receiving after the first file, until interrupted.
    #[arg(long)]
    keep: bool,

    #[command(flatten)]
    peer: PeerArgs,
}

fn bar(out: &OutputArgs, len: u64, prefix: &str) -> ProgressBar {
    let target = if out.json || out.no_progress { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let style = ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let b = ProgressBar::with_draw_target(Some(len), target).with_style(style);
    b.set_prefix(prefix.to_owned());
    b
}

fn json_line(out: &OutputArgs, value: &impl serde::Serialize) {
    if out.json
        && let Ok(line) = serde_json::to_string(value)
    {
        crate::output::line(&line);
    }
}

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let p = &args.peer;
    let token = p.server.token()?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .context("the file has no name; pass --as")?,
    };
    let chunk_size = u32::try_from(args.chunk_size)
        .ok()
        .filter(|c| (1..=ReceiveLimits::default().max_message as u32 - 8).contains(c))
        .context("--chunk-size must be at most 256 KiB minus the 8-byte header")?;
    let mut sig = Signaling::join(&p.server.server, &p.room, Role::Peer, p.peer_id.as_deref(), &token).await?;
    let to = match args.to.as_deref() {
        Some(SERVER_PEER) => SERVER_PEER.to_owned(),
        wanted => sig.find_peer(wanted, args.wait).await.context("no peer to send to")?,
    };
    let config = p.net.config();
    let (peer, mut chans) = connect::offer(&mut sig, &to, &config, &[CONTROL_LABEL, UPLOAD_LABELS[0]], args.wait)
        .await
        .with_context(|| format!("connecting to {to}"))?;
    let upload_at = chans.iter().position(|c| c.label() != CONTROL_LABEL).context("no upload channel")?;
    let mut upload = chans.remove(upload_at);
    let mut control = chans.pop().context("no control channel")?;
    let out = p.output;
    let progress = bar(&out, 0, &name);
    let report = send_file(&mut control, &mut upload, &args.file, &name, chunk_size, |e| {
        match &e {
            SendEvent::Started { size, resumed_chunks, .. } => {
                progress.set_length(*size);
                if *resumed_chunks > 0 {
                    progress.set_message(format!("{resumed_chunks} chunks already there"));
                }
            }
            SendEvent::Progress { received_chunks, size, .. } => {
                progress.set_position((received_chunks * u64::from(chunk_size)).min(*size));
            }
        }
        json_line(&out, &e);
    })
    .await
    .with_context(|| format!("sending {} to {to}", args.file.display()))?;
    progress.finish_and_clear();
    peer.close().await;
    if out.json {
        let mut v = serde_json::to_value(&report)?;
        v["type"] = "result".into();
        crate::output::line(&v.to_string());
    } else {
        crate::output::line(&format!(
            "{} → {to}: {}  sha256 {}  stored as {}{}",
            report.name,
            human_bytes(report.size),
            report.sha256,
            report.stored_as,
            if report.resumed_chunks > 0 {
                format!("  ({} of {} chunks resumed)", report.resumed_chunks, report.chunks)
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}

pub async fn recv(args: RecvArgs) -> anyhow::Result<()> {
    let p = &args.peer;
    let token = p.server.token()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let work = args.out.join(".ferry-recv");
    let mut sig = Signaling::join(&p.server.server, &p.room, Role::Peer, p.peer_id.as_deref(), &token).await?;
    let out = p.output;
    if !out.json {
        eprintln!("ferry recv: waiting in room {} as {}", p.room, sig.peer_id());
    }
    json_line(&out, &serde_json::json!({"type": "waiting", "room": p.room, "peer_id": sig.peer_id()}));
    loop {
        let waited = sig.wait_description("offer", None, Duration::from_secs(3600), |_| {}).await;
        let (from, offer) = match waited {
            Ok(x) => x,
            Err(SignalingError::Timeout(_)) => continue,
            // Signaling is not read during a transfer, so the server may have let it go, or its
            // instance died: join again as the same peer.
            Err(SignalingError::Closed) => {
                sig.rejoin().await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let config = p.net.config();
        let expect = Expect { count: 2, enough: &UPLOAD_LABELS };
        let (peer, mut chans) = match connect::answer(&mut sig, &from, &offer, &config, expect, CONNECT_WAIT).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("ferry recv: {from}: {e}");
                continue;
            }
        };
        let Some(upload_at) = chans.iter().position(|c| UPLOAD_LABELS.contains(&c.label())) else {
            eprintln!("ferry recv: {from} opened no upload channel");
            continue;
        };
        let mut upload = chans.remove(upload_at);
        let mut control = chans.into_iter().find(|c| c.label() == CONTROL_LABEL);
        let progress = bar(&out, 0, &from);
        let mut sink = FileSink::new(&work, &args.out);
        let received = receive(control.as_mut(), &mut upload, &mut sink, ReceiveLimits::default(), |e| {
            match &e {
                ReceiveEvent::Started { name, size, .. } => {
                    progress.set_prefix(name.clone());
                    progress.set_length(*size);
                }
                ReceiveEvent::Progress { received_chunks, chunks } => {
                    let len = progress.length().unwrap_or(0);
                    progress.set_position(len * received_chunks / u64::from((*chunks).max(1)));
                }
            }
            json_line(&out, &e);
        })
        .await;
        progress.finish_and_clear();
        // Let the answer leave before the connection closes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        peer.close().await;
        let received = match received {
            Ok((r, _)) => r,
            Err(e) => {
                let what = if matches!(e, TransferError::Fault(Fault::Closed) | TransferError::Peer(_)) {
                    "the sender went away; what arrived is kept for when it comes back"
                } else {
                    "the transfer was refused"
                };
                eprintln!("ferry recv: {from}: {e} ({what})");
                json_line(
                    &out,
                    &serde_json::json!({"type": "failed", "from": from, "code": e.code(), "error": e.to_string()}),
                );
                continue;
            }
        };
        if out.json {
            let v = serde_json::json!({"type": "result", "from": from, "path": received.key, "size": received.size, "sha256": received.sha256});
            crate::output::line(&v.to_string());
        } else {
            crate::output::line(&format!(
                "{}  {}  sha256 {}  from {from}",
                received.key,
                human_bytes(received.size),
                received.sha256
            ));
        }
        if !args.keep {
            return Ok(());
        }
    }
}
