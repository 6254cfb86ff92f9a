//! Turns transfer events into progress bars, JSON lines, or (with `--no-progress`) just the lines
//! that need attention.

use std::collections::HashMap;

use ferry_client::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::client::OutputArgs;

pub async fn render(mut rx: UnboundedReceiver<Event>, out: OutputArgs) {
    if out.json {
        while let Some(e) = rx.recv().await {
            if let Ok(line) = serde_json::to_string(&e) {
                crate::output::line(&line);
            }
        }
        return;
    }
    let target = if out.no_progress { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let multi = MultiProgress::with_draw_target(target);
    let style = ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let total_style = ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30.green}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut bars: HashMap<String, (ProgressBar, u64)> = HashMap::new();
    let mut total: Option<ProgressBar> = None;
    let note = |multi: &MultiProgress, line: String| {
        if multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = multi.println(line);
        }
    };
    while let Some(e) = rx.recv().await {
        match e {
            Event::Started { file, size, resumed_bytes, part_count, .. } => {
                let bar = multi.add(ProgressBar::new(size).with_style(style.clone()).with_prefix(short(&file)));
                bar.set_position(resumed_bytes);
                if resumed_bytes > 0 {
                    bar.set_message(format!("resumed at {}", crate::client::human_bytes(resumed_bytes)));
                } else {
                    bar.set_message(format!("{part_count} parts"));
                }
                bars.insert(file, (bar, resumed_bytes));
                let all: u64 = bars.values().map(|(b, _)| b.length().unwrap_or(0)).sum();
                let t = total.get_or_insert_with(|| {
                    multi.add(ProgressBar::new(0).with_style(total_style.clone()).with_prefix("total"))
                });
                t.set_length(all);
                t.set_position(bars.values().map(|(b, _)| b.position()).sum());
            }
            Event::Progress { file, bytes, .. } => {
                if let Some((bar, _)) = bars.get(&file) {
                    bar.set_position(bytes);
                }
                if let Some(t) = &total {
                    t.set_position(bars.values().map(|(b, _)| b.position()).sum());
                }
            }
            Event::Retry { file, part_number, delay_ms, error, .. } => {
                if let Some((bar, _)) = bars.get(&file) {
                    bar.set_message(format!("retrying part {part_number} in {:.1}s", delay_ms as f64 / 1000.0));
                }
                tracing::debug!(%file, part_number, %error, "retry");
            }
            Event::Restarted { file, reason } => note(&multi, format!("{file}: starting over: {reason}")),
            Event::Reconciled { file, lost, conflicting } => note(
                &multi,
                format!(
                    "{file}: re-sending {} parts the server no longer holds as they were sent",
                    lost.len() + conflicting.len()
                ),
            ),
            Event::Fallback { file, reason } => note(&multi, format!("{file}: {reason}")),
            Event::Verifying { file } => {
                if let Some((bar, _)) = bars.get(&file) {
                    bar.set_message("verifying SHA-256");
                }
            }
            Event::Completed { file, .. } => {
                if let Some((bar, _)) = bars.get(&file) {
                    bar.set_position(bar.length().unwrap_or(0));
                    bar.finish_with_message("done");
                }
            }
            Event::Failed { file, error } => {
                if let Some((bar, _)) = bars.get(&file) {
                    bar.abandon_with_message("failed");
                }
                tracing::debug!(%file, %error, "failed");
            }
            Event::PartDone { .. } => {}
            Event::Server { file, event } => {
                if let Some(line) = crate::watch::describe(&event, true) {
                    note(&multi, format!("{}: {line}", short(&file)));
                }
            }
        }
    }
    if let Some(t) = total {
        if bars.len() > 1 {
            t.finish();
        } else {
            t.finish_and_clear();
        }
    }
}

/// The last path segment, so bars stay one line.
fn short(file: &str) -> String {
    let name = file.rsplit('/').next().unwrap_or(file);
    if name.chars().count() > 28 {
        format!("{}…", name.chars().take(27).collect::<String>())
    } else {
        name.to_owned()
    }
}
