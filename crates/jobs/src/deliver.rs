//! A file into a room by seed 001's transport rules ([`ferry_core::transport`]): over a data
//! channel to a peer (or to the server's own peer, which stores it), or — when the rules say so,
//! or no connection opens in time — as HTTP parts through the server, which the caller then does.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_core::signal::{Role, SERVER_PEER};
use ferry_core::transport::{Choice, Kind, Thresholds, Transport};
use ferry_rtc::connect;
use ferry_rtc::signaling::Signaling;
use ferry_rtc::transfer::{CHUNK, CONTROL_LABEL, SendReport, UPLOAD_LABELS, send_file};

use crate::Connection;
use crate::error::{JobError, io};

/// The rules' inputs, and how long a peer connection may take.
#[derive(Debug, Clone)]
pub struct Rules {
    pub thresholds: Thresholds,
    /// What the file is; `None`: guessed from its name.
    pub kind: Option<Kind>,
    /// Real-time data: always a data channel.
    pub realtime: bool,
    pub connect_timeout: Duration,
}

/// How a file went.
#[derive(Debug)]
pub enum Delivered {
    /// Over a data channel.
    Sent(SendReport),
    /// It is to go as HTTP parts through the server.
    Parts,
}

/// Sends `file` as `name` to `target`, `ROOM[/PEER]` (the server's own peer when no peer is
/// named), if the rules choose a data channel and one opens in time. `on_choice` hears the
/// choice and, if it falls back, the fallback, each with its reason.
pub async fn deliver(
    conn: &Connection,
    target: &str,
    rules: &Rules,
    file: &Path,
    name: &str,
    mut on_choice: impl FnMut(&Choice),
) -> Result<Delivered, JobError> {
    let (room, peer) = match target.split_once('/') {
        Some((r, p)) if !p.is_empty() => (r, Some(p)),
        Some((r, _)) => (r, None),
        None => (target, None),
    };
    let size = std::fs::metadata(file).map_err(io(file))?.len();
    let kind = rules.kind.unwrap_or_else(|| Kind::guess(name));
    let choice = Choice::new(size, kind, rules.realtime, &rules.thresholds);
    on_choice(&choice);
    if choice.transport == Transport::HttpParts {
        return Ok(Delivered::Parts);
    }
    let started = Instant::now();
    let connecting = async {
        let mut sig = Signaling::join(&conn.server, room, Role::Peer, None, &conn.token).await?;
        let to = match peer {
            Some(p) if p != SERVER_PEER => sig.find_peer(Some(p), rules.connect_timeout).await?,
            _ => SERVER_PEER.to_owned(),
        };
        let labels = [CONTROL_LABEL, UPLOAD_LABELS[0]];
        Ok::<_, JobError>(connect::offer(&mut sig, &to, &conn.peer, &labels, rules.connect_timeout).await?)
    };
    let connected = match tokio::time::timeout(rules.connect_timeout, connecting).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no peer connection");
            None
        }
        Err(_) => None,
    };
    let Some((peer_conn, mut chans)) = connected else {
        on_choice(&choice.fall_back(started.elapsed()));
        return Ok(Delivered::Parts);
    };
    let missing = || JobError::Usage("the peer opened other channels than the control and upload ones".into());
    let at = chans.iter().position(|c| c.label() != CONTROL_LABEL).ok_or_else(missing)?;
    let mut upload = chans.remove(at);
    let mut control = chans.pop().ok_or_else(missing)?;
    let report = send_file(&mut control, &mut upload, file, name, CHUNK, |_| {}).await?;
    peer_conn.close().await;
    Ok(Delivered::Sent(report))
}
