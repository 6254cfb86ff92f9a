//! `ferry room ls ROOM`: the results a room's workers have recorded in its manifest.

use clap::{Args, Subcommand};

use crate::client::{ServerArgs, human_bytes};

#[derive(Args)]
pub struct RoomArgs {
    #[command(subcommand)]
    command: RoomCommand,
}

#[derive(Subcommand)]
enum RoomCommand {
    /// List the jobs in the room's manifest, with their outputs.
    Ls {
        room: String,
        /// Print the manifest's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn run(args: RoomArgs) -> anyhow::Result<()> {
    let RoomCommand::Ls { room, json, server } = args.command;
    let (manifest, _) = server.api()?.manifest(&room).await?;
    if json {
        crate::output::line(&serde_json::to_string_pretty(&manifest)?);
        return Ok(());
    }
    if manifest.entries.is_empty() {
        crate::output::line(&format!("no results in room {room} yet"));
    }
    for e in &manifest.entries {
        crate::output::line(&format!(
            "{}  {:<10} by {}  inputs: {}",
            e.job_id,
            e.status,
            e.worker,
            if e.inputs.is_empty() { "none".to_owned() } else { e.inputs.join(", ") }
        ));
        for o in &e.outputs {
            crate::output::line(&format!("    {}  {}  sha256 {}", o.key, human_bytes(o.size), o.sha256));
        }
    }
    Ok(())
}
