//! `ferry status`, `ferry ls`, `ferry cancel`: look at and manage upload sessions.

use clap::Args;

use crate::client::{ServerArgs, human_bytes};

#[derive(Args)]
pub struct StatusArgs {
    /// Upload id.
    id: String,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct LsArgs {
    /// Only sessions in this state: uploading, completed, cancelled, expired, failed.
    #[arg(long)]
    state: Option<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct CancelArgs {
    /// Upload id.
    id: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct ReprocessArgs {
    /// Upload id.
    id: String,
    /// Part number.
    part: u32,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn reprocess(args: ReprocessArgs) -> anyhow::Result<()> {
    args.server.api()?.reprocess(&args.id, args.part).await?;
    crate::output::line(&format!(
        "part {} of {} queued for processing; `ferry watch {}` shows the result",
        args.part, args.id, args.id
    ));
    Ok(())
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let st = args.server.api()?.status(&args.id).await?;
    if args.json {
        crate::output::line(&serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    crate::output::line(&format!("upload   {}", st.upload_id));
    crate::output::line(&format!("key      {}", st.key));
    crate::output::line(&format!("state    {}", st.state.as_str()));
    crate::output::line(&format!(
        "received {} of {} ({} of {} parts of {})",
        human_bytes(st.bytes_received),
        human_bytes(st.size),
        st.parts.len(),
        st.part_count,
        human_bytes(st.part_size)
    ));
    crate::output::line(&format!("created  {}", rfc3339(st.created_at)));
    crate::output::line(&format!("expires  {}", rfc3339(st.expires_at)));
    if let Some(r) = st.result {
        crate::output::line(&format!("sha256   {}", r.sha256.as_deref().unwrap_or("unknown")));
    }
    if let Some(p) = st.processing {
        let final_state = match &p.final_result {
            Some(f) if f.status == ferry_core::events::FinalStatus::Completed => "final result in",
            Some(_) => "final result: failed",
            None => "no final result yet",
        };
        crate::output::line(&format!(
            "process  {}: {} parts processed, {} failed; {final_state}",
            p.processor, p.parts_processed, p.parts_failed
        ));
    }
    if let Some(w) = st.webhook {
        for d in &w.deliveries {
            crate::output::line(&format!(
                "webhook  {} -> {}: {:?} after {} attempt(s)",
                d.kind, w.url, d.state, d.attempts
            ));
        }
    }
    Ok(())
}

pub async fn ls(args: LsArgs) -> anyhow::Result<()> {
    let list = args.server.api()?.list(args.state.as_deref()).await?;
    if args.json {
        crate::output::line(&serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        crate::output::line("no uploads");
    }
    for u in list {
        crate::output::line(&format!(
            "{}  {:<10} {:>10}  {}  {}",
            u.upload_id,
            u.state.as_str(),
            human_bytes(u.size),
            rfc3339(u.created_at),
            u.key
        ));
    }
    Ok(())
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let st = args.server.api()?.cancel(&args.id).await?;
    if args.json {
        crate::output::line(&serde_json::to_string_pretty(&st)?);
    } else {
        crate::output::line(&format!("{}  {}", st.upload_id, st.state.as_str()));
    }
    Ok(())
}
