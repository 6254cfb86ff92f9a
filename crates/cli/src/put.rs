//! `ferry put`: upload files, resumably.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use ferry_client::{UploadOptions, events, journal};
use ferry_core::schedule::RetryPolicy;
use futures_util::StreamExt;

use crate::client::{OutputArgs, ServerArgs, human_bytes, parse_concurrency, parse_size};

/// Files uploaded side by side; their parts share the one concurrency budget.
const FILES_AT_ONCE: usize = 4;

#[derive(Args)]
pub struct PutArgs {
    /// Files to upload, in one queue.
    #[arg(required = true)]
    files: Vec<PathBuf>,

    /// Object key (one file only). Default: the file's name.
    #[arg(long)]
    key: Option<String>,

    /// Part size, e.g. 8MiB. Default: the server's (8 MiB, more for files over 80 GB).
    #[arg(long, value_parser = parse_size)]
    part_size: Option<u64>,

    /// Parts in flight at once, across all files. Memory use is about this × the part size.
    #[arg(long, default_value = "8", value_parser = parse_concurrency)]
    concurrency: usize,

    /// Attempts per part before giving up.
    #[arg(long, default_value = "10")]
    retries: u32,

    /// Content-Type recorded with the object.
    #[arg(long)]
    content_type: Option<String>,

    /// Have the server process the upload with this processor (its name; `ferry serve` lists
    /// what it runs with --part-processor and --complete-processor).
    #[arg(long)]
    processor: Option<String>,

    /// Print processing results as they stream in, and wait for the final one.
    #[arg(long)]
    follow: bool,

    /// Have the server POST the upload's outcome (completed, final result, cancelled, …) here,
    /// signed with its --webhook-secret.
    #[arg(long)]
    webhook_url: Option<String>,

    #[command(flatten)]
    room: crate::hybrid::RoomTarget,

    #[command(flatten)]
    server: ServerArgs,

    #[command(flatten)]
    output: OutputArgs,
}

pub async fn run(args: PutArgs) -> anyhow::Result<()> {
    if args.key.is_some() && args.files.len() > 1 {
        bail!("--key names one object; give one file with it");
    }
    if args.retries == 0 {
        bail!("--retries must be at least 1");
    }
    if args.room.to.is_none() && (args.room.transport.realtime || args.room.transport.kind.is_some()) {
        bail!("--realtime and --kind choose a transport for --to ROOM[/PEER]; give --to");
    }
    if let Some(target) = &args.room.to {
        if args.files.len() != 1 {
            bail!("--to sends one file");
        }
        if args.processor.is_some() || args.follow || args.webhook_url.is_some() {
            bail!("--processor, --follow and --webhook-url are for uploads through the server; leave out --to");
        }
        let file = &args.files[0];
        let name = match &args.key {
            Some(k) => k.clone(),
            None => file
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
                .context("the file has no name; pass --key")?,
        };
        if let ferry_jobs::deliver::Delivered::Sent(r) =
            crate::hybrid::send(target, &args.room.transport, &args.room.net, &args.server, args.output, file, &name)
                .await?
        {
            if args.output.json {
                let mut v = serde_json::to_value(&r)?;
                v["type"] = "result".into();
                v["transport"] = "data_channel".into();
                crate::output::line(&v.to_string());
            } else {
                crate::output::line(&format!(
                    "{}  {}  sha256 {}  [data channel]",
                    r.stored_as,
                    human_bytes(r.size),
                    r.sha256
                ));
            }
            return Ok(());
        }
    }
    let api = args.server.api()?;
    let mut opts = UploadOptions::new(journal::default_state_dir());
    opts.key = args.key.clone();
    opts.part_size = args.part_size;
    opts.concurrency = args.concurrency;
    opts.retry = RetryPolicy { max_attempts: args.retries, ..RetryPolicy::default() };
    opts.content_type = args.content_type.clone();
    opts.processor = args.processor.clone();
    opts.webhook_url = args.webhook_url.clone();
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let (render_sink, rx) = events::channel();
    let renderer = tokio::spawn(crate::progress::render(rx, args.output));
    // With --follow, each upload's server events are watched from the moment it has an id.
    let (sink, mut upload_events) = events::channel();
    let follow = args.follow;
    let forwarder = {
        let (api, render_sink) = (Arc::clone(&api), render_sink.clone());
        tokio::spawn(async move {
            let mut watchers = HashMap::new();
            while let Some(e) = upload_events.recv().await {
                if let (true, events::Event::Started { file, upload_id: Some(id), .. }) = (follow, &e)
                    && !watchers.contains_key(file)
                {
                    let watcher = crate::watch::follow(Arc::clone(&api), id.clone(), file.clone(), render_sink.clone());
                    watchers.insert(file.clone(), tokio::spawn(watcher));
                }
                render_sink.emit(e);
            }
            watchers
        })
    };
    let uploads = futures_util::stream::iter(args.files.clone())
        .map(|file| {
            let (api, opts, sink, permits) = (Arc::clone(&api), opts.clone(), sink.clone(), Arc::clone(&permits));
            async move { (file.clone(), ferry_client::upload(api, file, opts, sink, permits).await) }
        })
        .buffered(FILES_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    drop(sink);
    let mut watchers = forwarder.await.unwrap_or_default();
    let mut processing_failed = 0;
    for (file, result) in &uploads {
        let Some(w) = watchers.remove(&file.display().to_string()) else { continue };
        if result.is_err() {
            w.abort();
        } else if !matches!(w.await, Ok(Ok(true))) {
            processing_failed += 1;
        }
    }
    drop(render_sink);
    let _ = renderer.await;
    let mut failed = 0;
    let mut resumable = false;
    for (file, result) in uploads {
        match result {
            Ok(r) => {
                if args.output.json {
                    let mut v = serde_json::to_value(&r)?;
                    v["type"] = "result".into();
                    crate::output::line(&v.to_string());
                } else {
                    let rate = r.bytes_sent as f64 / r.elapsed_s.max(1e-9);
                    crate::output::line(&format!(
                        "{}  {}  sha256 {}  ({} part{}{}, {} retries, {}/s){}",
                        r.key,
                        human_bytes(r.size),
                        r.sha256,
                        r.parts,
                        if r.parts == 1 { "" } else { "s" },
                        if r.resumed_parts > 0 { format!(", {} resumed", r.resumed_parts) } else { String::new() },
                        r.retries,
                        human_bytes(rate as u64),
                        if r.fallback { "  [through the API]" } else { "" }
                    ));
                }
            }
            Err(e) => {
                failed += 1;
                resumable |= matches!(e.failure(), ferry_core::schedule::Failure::Retryable { .. });
                let text = e.to_string();
                let name = file.display().to_string();
                if text.starts_with(&name) { eprintln!("ferry: {text}") } else { eprintln!("ferry: {name}: {text}") }
            }
        }
    }
    if failed > 0 {
        let hint = if resumable { "; run the same command again to resume" } else { "" };
        bail!("{failed} of {} uploads failed{hint}", args.files.len());
    }
    if processing_failed > 0 {
        bail!("processing failed for {processing_failed} of {} uploads (see `ferry status ID`)", args.files.len());
    }
    Ok(())
}
