//! `--to ROOM[/PEER]`: the flags of a file sent by seed 001's transport rules
//! ([`ferry_jobs::deliver`]), and the line that says which transport and why.

use std::path::Path;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ferry_core::transport::{Choice, Kind, Thresholds};
use ferry_jobs::deliver::{Delivered, Rules, deliver};

use crate::client::{OutputArgs, PeerNetArgs, ServerArgs, parse_size};

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
    pub net: PeerNetArgs,
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

impl TransportArgs {
    pub fn rules(&self) -> anyhow::Result<Rules> {
        Ok(Rules {
            thresholds: Thresholds::new(self.small_below, self.large_above).map_err(anyhow::Error::msg)?,
            kind: self.kind.map(|k| match k {
                KindArg::Dataset => Kind::Dataset,
                KindArg::Model => Kind::Model,
                KindArg::Other => Kind::Other,
            }),
            realtime: self.realtime,
            connect_timeout: self.connect_timeout,
        })
    }
}

/// Says which transport carries a file, and why.
pub fn say(out: OutputArgs, choice: &Choice) {
    if out.json {
        let mut v = serde_json::to_value(choice).unwrap_or_default();
        v["type"] = "transport".into();
        v["text"] = choice.to_string().into();
        crate::output::line(&v.to_string());
    } else {
        eprintln!("transport: {choice}");
    }
}

/// Sends `file` as `name` to `target` by the rules; `Parts` means the caller uploads it.
pub async fn send(
    target: &str,
    t: &TransportArgs,
    net: &PeerNetArgs,
    server: &ServerArgs,
    out: OutputArgs,
    file: &Path,
    name: &str,
) -> anyhow::Result<Delivered> {
    let conn = server.connection(Some(net))?;
    Ok(deliver(&conn, target, &t.rules()?, file, name, |c| say(out, c)).await?)
}
