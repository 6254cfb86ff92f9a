//! `ferry watch`, and `ferry put --follow`: an upload's events as they happen.

use std::sync::Arc;

use anyhow::bail;
use clap::Args;
use ferry_client::Api;
use ferry_client::events::{Event, EventSink};
use ferry_core::events::{EventRecord, FinalStatus, UploadEvent};
use ferry_core::schedule::RetryPolicy;

use crate::client::{ServerArgs, human_bytes};

#[derive(Args)]
pub struct WatchArgs {
    /// Upload id.
    id: String,

    /// Start after this event id (0: from the beginning).
    #[arg(long, default_value = "0")]
    after: u64,

    /// Print each event as the server's JSON, one per line.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    server: ServerArgs,
}

/// A line for people about `record`; `None` for events only JSON readers want. `brief` leaves out
/// what a progress bar already shows.
pub fn describe(record: &EventRecord, brief: bool) -> Option<String> {
    let one_line = |s: &str| {
        let s = s.trim().replace('\n', " ⏎ ");
        if s.chars().count() > 200 { format!("{}…", s.chars().take(199).collect::<String>()) } else { s }
    };
    Some(match &record.event {
        UploadEvent::Initialized { key, size, part_count, processor, .. } => {
            let with = processor.as_ref().map(|p| format!(", processor {p}")).unwrap_or_default();
            format!("upload of {key}: {} in {part_count} parts{with}", human_bytes(*size))
        }
        UploadEvent::PartReceived { part_number, .. } if !brief => format!("part {part_number} received"),
        UploadEvent::Progress(p) if !brief => format!(
            "{} of {} received ({}/{} parts), {} processed{}",
            human_bytes(p.bytes_received),
            human_bytes(p.size),
            p.parts_received,
            p.part_count,
            p.parts_processed,
            if p.parts_failed > 0 { format!(", {} failed", p.parts_failed) } else { String::new() }
        ),
        UploadEvent::PartProcessed { part_number, ok: true, result, .. } => {
            format!("part {part_number} processed: {}", one_line(result.as_deref().unwrap_or_default()))
        }
        UploadEvent::PartProcessed { part_number, ok: false, error, .. } => {
            format!("part {part_number} failed processing: {}", error.as_deref().unwrap_or("unknown error"))
        }
        UploadEvent::PartialResult { through_part, .. } if !brief => format!("results in through part {through_part}"),
        UploadEvent::Completed { key, size, sha256, .. } => {
            format!("completed {key} ({}, sha256 {})", human_bytes(*size), sha256.as_deref().unwrap_or("unknown"))
        }
        UploadEvent::FinalResult(f) => match f.status {
            FinalStatus::Completed => format!("final result: {}", one_line(&f.result)),
            FinalStatus::Failed => format!("processing failed: {}", f.error.as_deref().unwrap_or("unknown error")),
        },
        UploadEvent::Failed { message, .. } => format!("failed: {message}"),
        UploadEvent::Cancelled => "cancelled".to_owned(),
        UploadEvent::Expired => "expired before it was completed".to_owned(),
        _ => return None,
    })
}

/// Whether the stream's last event means success.
fn succeeded(last: &EventRecord) -> bool {
    match &last.event {
        UploadEvent::FinalResult(f) => f.status == FinalStatus::Completed,
        UploadEvent::Completed { .. } => true,
        _ => false,
    }
}

/// Follows one upload of `ferry put --follow`, handing its events to the renderer. `Ok(true)` when
/// it ended well.
pub async fn follow(api: Arc<Api>, upload_id: String, file: String, sink: EventSink) -> anyhow::Result<bool> {
    let last = ferry_client::watch(&api, &upload_id, 0, &RetryPolicy::default(), |record| {
        sink.emit(Event::Server { file: file.clone(), event: record.clone() });
    })
    .await?;
    Ok(succeeded(&last))
}

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let api = args.server.api()?;
    let json = args.json;
    let last = ferry_client::watch(&api, &args.id, args.after, &RetryPolicy::default(), |record| {
        if json {
            if let Ok(line) = serde_json::to_string(record) {
                crate::output::line(&line);
            }
        } else if let Some(line) = describe(record, false) {
            crate::output::line(&format!("{:>5}  {line}", record.id));
        }
    })
    .await?;
    if !succeeded(&last) {
        bail!("the upload ended without success ({})", last.event.kind());
    }
    Ok(())
}
