//! `ferry get`: download an object, resumably.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use ferry_client::{DownloadOptions, events, journal};

use crate::client::{OutputArgs, ServerArgs, human_bytes, parse_concurrency, parse_size};

#[derive(Args)]
pub struct GetArgs {
    /// Object key.
    key: String,

    /// Where to write it (a directory means inside it). Default: the key's last segment, here.
    out: Option<PathBuf>,

    /// Bytes per ranged request, e.g. 8MiB.
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    part_size: u64,

    /// Ranges in flight at once.
    #[arg(long, default_value = "8", value_parser = parse_concurrency)]
    concurrency: usize,

    #[command(flatten)]
    server: ServerArgs,

    #[command(flatten)]
    output: OutputArgs,
}

pub async fn run(args: GetArgs) -> anyhow::Result<()> {
    if args.part_size == 0 {
        anyhow::bail!("--part-size must be more than 0");
    }
    let api = args.server.api()?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(args.key.rsplit('/').next().unwrap_or(&args.key)));
    let mut opts = DownloadOptions::new(journal::default_state_dir());
    opts.chunk_size = args.part_size;
    opts.concurrency = args.concurrency;
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let (sink, rx) = events::channel();
    let renderer = tokio::spawn(crate::progress::render(rx, args.output));
    let result = ferry_client::download(api, args.key.clone(), out, opts, sink, permits).await;
    let _ = renderer.await;
    let r = result?;
    if args.output.json {
        let mut v = serde_json::to_value(&r)?;
        v["type"] = "result".into();
        crate::output::line(&v.to_string());
    } else {
        crate::output::line(&format!(
            "{}  {}  sha256 {}  ({} retries)",
            r.file,
            human_bytes(r.size),
            r.sha256,
            r.retries
        ));
    }
    Ok(())
}
