//! `ferry put FILE --to ROOM[/PEER]`: one file, over the transport seed 001's rules choose
//! ([`ferry_core::transport`]). A data channel goes to PEER, or to the server itself (peer
//! `ferry`) when no peer is named; if no peer connection opens within the timeout, the file goes
//! as HTTP parts through the server instead. The user is told which transport and why.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use ferry_core::signal::{Role, SERVER_PEER};
use ferry_core::transport::{Choice, Kind, Thresholds, Transport};
use ferry_rtc::connect;
use ferry_rtc::signaling::Signaling;
use ferry_rtc::transfer::{CHUNK, CONTROL_LABEL, SendReport, UPLOAD_LABELS, send_file};

use crate::client::{OutputArgs, ServerArgs, parse_size};

#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    Dataset,
    Model,
    Other,
}

#[derive(Args, Clone)]
pub struct RoomTarget {
    /// Send to a signaling room instead: `ROOM` (the server, over a data channel) or `ROOM/PEER`
    /// (peer to peer). The transport is chosen by size, kind and --realtime, and said why.
    #[arg(long, value_name = "ROOM[/PEER]")]
    pub to: Option<String>,

    #[command(flatten)]
    pub transport: TransportArgs,

    #[command(flatten)]
    pub net: crate::client::PeerNetArgs,
}

/// The rules' inputs that the user sets, and how long a peer connection may take.
#[derive(Args, Clone)]
pub struct TransportArgs {
    /// Real-time data: always a data channel.
    #[arg(long)]
    pub realtime: bool,

    /// What the file is, for the rules (datasets and models of middling size go as HTTP parts).
    /// Default: a guess from its extension.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,

    /// Files below this many bytes go over a data channel.
    #[arg(long, default_value = "10000000", value_parser = parse_size)]
    small_below: u64,

    /// Files above this many bytes go as HTTP parts.
    #[arg(long, default_value = "100000000", value_parser = parse_size)]
    large_above: u64,

    /// How long a peer connection may take before the file goes through the server instead.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
}

/// What `put` does next for a file sent `--to` a room.
pub enum Outcome {
    /// It went over a data channel.
    Sent(SendReport),
    /// It goes as HTTP parts through the server.
    Parts,
}

fn say(out: OutputArgs, choice: &Choice) {
    if out.json {
        let mut v = serde_json::to_value(choice).unwrap_or_default();
        v["type"] = "transport".into();
        v["text"] = choice.to_string().into();
        crate::output::line(&v.to_string());
    } else {
        eprintln!("transport: {choice}");
    }
}

/// Sends `file` as `name` to `target`, `ROOM[/PEER]` (the server's own peer when no peer is
/// named), over a data channel if the rules choose one and a connection opens in time;
/// otherwise says it goes as HTTP parts, which the caller then does.
pub async fn send(
    target: &str,
    t: &TransportArgs,
    net: &crate::client::PeerNetArgs,
    server: &ServerArgs,
    out: OutputArgs,
    file: &Path,
    name: &str,
) -> anyhow::Result<Outcome> {
    let (room, peer) = match target.split_once('/') {
        Some((r, p)) if !p.is_empty() => (r, Some(p)),
        Some((r, _)) => (r, None),
        None => (target, None),
    };
    let thresholds = Thresholds::new(t.small_below, t.large_above).map_err(anyhow::Error::msg)?;
    let size = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
    let kind = match t.kind {
        Some(KindArg::Dataset) => Kind::Dataset,
        Some(KindArg::Model) => Kind::Model,
        Some(KindArg::Other) => Kind::Other,
        None => Kind::guess(name),
    };
    let choice = Choice::new(size, kind, t.realtime, &thresholds);
    say(out, &choice);
    if choice.transport == Transport::HttpParts {
        return Ok(Outcome::Parts);
    }
    let started = Instant::now();
    let token = server.token()?;
    let config = net.config();
    let connecting = async {
        let mut sig = Signaling::join(&server.server, room, Role::Peer, None, &token).await?;
        let to = match peer {
            Some(p) if p != SERVER_PEER => sig.find_peer(Some(p), t.connect_timeout).await?,
            _ => SERVER_PEER.to_owned(),
        };
        let (peer, chans) =
            connect::offer(&mut sig, &to, &config, &[CONTROL_LABEL, UPLOAD_LABELS[0]], t.connect_timeout).await?;
        anyhow::Ok((peer, chans))
    };
    let connected = match tokio::time::timeout(t.connect_timeout, connecting).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no peer connection");
            None
        }
        Err(_) => None,
    };
    let Some((peer_conn, mut chans)) = connected else {
        say(out, &choice.fall_back(started.elapsed()));
        return Ok(Outcome::Parts);
    };
    let at = chans.iter().position(|c| c.label() != CONTROL_LABEL).context("no upload channel")?;
    let mut upload = chans.remove(at);
    let mut control = chans.pop().context("no control channel")?;
    let report = send_file(&mut control, &mut upload, file, name, CHUNK, |_| {})
        .await
        .with_context(|| format!("sending {} over the data channel", file.display()))?;
    peer_conn.close().await;
    Ok(Outcome::Sent(report))
}
