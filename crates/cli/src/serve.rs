//! `ferry serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clap::Args;
use ferry_core::events::ProcessorKind;
use ferry_s3::{S3Config, S3Credentials, S3Store};
use ferry_server::{Server, ServerConfig};
use ferry_service::processing::{ProcessorSpec, parse_processor};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,

    /// Directory for stored objects, upload sessions and the server's secrets (embedded store).
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "./ferry-data")]
    data_dir: PathBuf,

    /// Keep everything in an S3-compatible bucket instead of the data dir: s3://BUCKET/PREFIX.
    /// Clients then send parts straight to the bucket with presigned URLs, and any number of
    /// servers pointed at the same bucket serve the same uploads. Credentials come from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), else from the
    /// AWS_PROFILE profile of ~/.aws/credentials.
    #[arg(long, env = "FERRY_STORE", value_name = "s3://BUCKET/PREFIX")]
    store: Option<String>,

    /// Make this server one of several on the same --store: signaling rooms, presence and live
    /// event wake-ups are shared through Redis at this URL (redis://[:PASSWORD@]HOST:PORT[/DB],
    /// rediss:// for TLS), so peers, workers and event streams meet whichever instance a load
    /// balancer sends them to. Without it, rooms live in this process.
    #[arg(long, env = "FERRY_BUS", value_name = "redis://HOST:PORT[/DB]", requires = "store")]
    bus: Option<String>,

    /// The S3 service's URL (MinIO, Ceph, Garage, R2, …). Default: AWS S3 in --s3-region.
    #[arg(long, env = "AWS_ENDPOINT_URL_S3", requires = "store")]
    s3_endpoint: Option<String>,

    /// The bucket's region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    s3_region: String,

    /// Address the bucket as https://HOST/BUCKET/KEY rather than https://BUCKET.HOST/KEY, as most
    /// self-hosted services need.
    #[arg(long, env = "FERRY_S3_PATH_STYLE", requires = "store")]
    s3_path_style: bool,

    /// Bearer token clients must send (repeat for several). Without one, a token is generated on
    /// first start, kept in the data dir and printed.
    #[arg(long = "token", env = "FERRY_TOKEN", value_delimiter = ',')]
    tokens: Vec<String>,

    /// Base URL clients reach this server at; signed URLs are built from it. Default: the listen
    /// address.
    #[arg(long, env = "FERRY_PUBLIC_URL")]
    public_url: Option<String>,

    /// Lifetime of signed part and object URLs (e.g. 1h, 15m, 90s).
    #[arg(long, env = "FERRY_URL_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    url_ttl: Duration,

    /// Uploads not completed within this time expire and their parts are deleted.
    #[arg(long, env = "FERRY_SESSION_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    session_ttl: Duration,

    /// Largest object accepted (e.g. 5TiB, 100GiB).
    #[arg(long, env = "FERRY_MAX_OBJECT_SIZE", default_value = "5TiB", value_parser = parse_size)]
    max_object_size: u64,

    /// How often to look for expired uploads. Default: a tenth of the session TTL, between 1 s and 1 min.
    #[arg(long, env = "FERRY_SWEEP_INTERVAL", value_parser = humantime::parse_duration)]
    sweep_interval: Option<Duration>,

    /// Requests handled at once; beyond that the server answers 503 with Retry-After.
    #[arg(long, env = "FERRY_MAX_REQUESTS", default_value = "1024")]
    max_requests: usize,

    /// A part body that sends nothing for this long is abandoned.
    #[arg(long, env = "FERRY_BODY_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    body_idle_timeout: Duration,

    /// A per-part processor clients may name at create: NAME=COMMAND (repeatable). It runs as soon
    /// as each part is stored, with the part's bytes on stdin and FERRY_PART_NUMBER,
    /// FERRY_PART_OFFSET, FERRY_PART_SIZE, FERRY_PART_COUNT, FERRY_UPLOAD_ID, FERRY_KEY in its
    /// environment; its stdout is the part's result. COMMAND is split into words and run without a
    /// shell (write `sh -c '…'` for one).
    #[arg(long = "part-processor", value_name = "NAME=COMMAND")]
    part_processors: Vec<String>,

    /// A processor for the assembled object: NAME=COMMAND (repeatable). It runs once the upload
    /// completes, with the object on stdin and at FERRY_OBJECT_PATH (a temporary copy), and
    /// FERRY_SHA256, FERRY_SIZE, FERRY_KEY, FERRY_UPLOAD_ID set; its stdout is the final result.
    #[arg(long = "complete-processor", value_name = "NAME=COMMAND")]
    complete_processors: Vec<String>,

    /// A TOML file with more processors: a table per name under [processors], with
    /// `on = "part"` or `"complete"`, `command = "…"` and an optional `timeout = "10m"`.
    #[arg(long, env = "FERRY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Processor runs at once, across all uploads.
    #[arg(long, env = "FERRY_PROCESSING_CONCURRENCY", default_value = "3")]
    processing_concurrency: usize,

    /// A processor run taking longer is killed, with everything it started.
    #[arg(long, env = "FERRY_PROCESSING_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    processing_timeout: Duration,

    /// An event stream (GET /v1/uploads/ID/events) with nothing to send for this long is closed.
    #[arg(long, env = "FERRY_EVENTS_IDLE_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    events_idle_timeout: Duration,

    /// How often an idle event stream sends a keep-alive comment, so proxies do not cut it.
    #[arg(long, env = "FERRY_EVENTS_KEEPALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    events_keepalive: Duration,

    /// An origin whose browser apps may call this server, e.g. https://app.example.com
    /// (repeatable, or comma-separated; `*` for any). Preflights are answered without a token and
    /// responses expose ETag. Not needed for the page ferry serves itself.
    #[arg(long = "cors-origin", env = "FERRY_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,

    /// The address ferry's WebRTC peer (POST /v1/rtc/offer, or a signal to peer `ferry`) binds,
    /// and offers to peers unless --rtc-public-ip says otherwise. 0.0.0.0 or :: bind every
    /// interface, and then need --rtc-public-ip.
    #[arg(long, env = "FERRY_RTC_BIND", default_value = "127.0.0.1")]
    rtc_bind: std::net::IpAddr,

    /// Serve every WebRTC peer on this one UDP port, so a firewall needs one rule (0: any free
    /// port). Without it, each peer gets a random port of its own.
    #[arg(long, env = "FERRY_RTC_UDP_PORT", value_name = "PORT")]
    rtc_udp_port: Option<u16>,

    /// The address peers can reach the WebRTC peer at, offered as its candidate instead of
    /// --rtc-bind's: a cloud server's public IP in front of a 1:1 NAT, or a container host's.
    #[arg(long, env = "FERRY_RTC_PUBLIC_IP", value_name = "IP")]
    rtc_public_ip: Option<std::net::IpAddr>,

    /// WebRTC peers served at once on the --rtc-udp-port; an offer beyond it answers 503
    /// rtc_busy.
    #[arg(long, env = "FERRY_RTC_MAX_PEERS", default_value_t = 256, value_name = "N")]
    rtc_max_peers: usize,

    /// An ICE server for the WebRTC peer, repeatable: stun:HOST[:PORT] is asked for its address
    /// outside a NAT; turn:USER:PASSWORD@HOST[:PORT] relays (over UDP) for peers that cannot
    /// reach it directly. Each is offered beside the host candidate.
    #[arg(long = "ice-server", env = "FERRY_ICE_SERVERS", value_delimiter = ',')]
    ice_servers: Vec<ferry_rtc::IceServer>,

    /// A token that admits peers to one signaling room (`/v1/signal`) besides the server's own:
    /// ROOM=TOKEN (repeatable).
    #[arg(long = "room-token", value_name = "ROOM=TOKEN")]
    room_tokens: Vec<String>,

    /// Signaling messages a connection may send per second; more closes it.
    #[arg(long, env = "FERRY_SIGNAL_RATE", default_value = "100")]
    signal_rate: u32,

    /// Signs webhook deliveries (HMAC-SHA256); without it, uploads cannot ask for a webhook.
    #[arg(long, env = "FERRY_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,

    /// How long an undelivered webhook is retried, with exponential backoff.
    #[arg(long, env = "FERRY_WEBHOOK_RETRY_FOR", default_value = "1h", value_parser = humantime::parse_duration)]
    webhook_retry_for: Duration,

    /// Hosts webhooks may be sent to (repeatable; `.example.com` admits its subdomains). Default:
    /// any host, except link-local addresses such as cloud metadata services.
    #[arg(long = "webhook-allow-host", env = "FERRY_WEBHOOK_ALLOW_HOSTS", value_delimiter = ',')]
    webhook_allow_hosts: Vec<String>,
}

/// `--config`: processors, by name.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    processors: BTreeMap<String, ProcessorEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessorEntry {
    on: ProcessorKind,
    command: String,
    #[serde(default)]
    timeout: Option<String>,
}

/// Every processor from the flags and the config file; a name given twice is an error.
fn processors(args: &ServeArgs) -> anyhow::Result<BTreeMap<String, ProcessorSpec>> {
    let mut all = BTreeMap::new();
    let mut add = |name: String, spec: ProcessorSpec| {
        if all.insert(name.clone(), spec).is_some() {
            bail!("the processor {name:?} is configured twice");
        }
        Ok(())
    };
    for (kind, list) in
        [(ProcessorKind::Part, &args.part_processors), (ProcessorKind::Complete, &args.complete_processors)]
    {
        for arg in list {
            let (name, spec) = parse_processor(arg, kind).map_err(anyhow::Error::msg)?;
            add(name, spec)?;
        }
    }
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let file: ConfigFile =
            toml::from_str(&text).with_context(|| format!("{} is not a valid config", path.display()))?;
        for (name, entry) in file.processors {
            let timeout = entry
                .timeout
                .map(|t| humantime::parse_duration(&t).with_context(|| format!("processor {name}: timeout {t:?}")))
                .transpose()?;
            let spec = ProcessorSpec::new(&name, &entry.command, entry.on, timeout)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            add(name, spec)?;
        }
    }
    Ok(all)
}

/// A URL as it may be logged: without its password.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(an unreadable URL)".into(),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    ferry_core::units::parse_size(s).map_err(|e| e.to_string())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.tokens.iter().any(|t| t.trim().is_empty()) {
        bail!("--token must not be empty");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr().context("cannot read the bound address")?;
    let public_url = match &args.public_url {
        Some(url) => url.clone(),
        None if local.ip().is_unspecified() => {
            tracing::warn!(
                "listening on every interface: signed URLs will name 127.0.0.1; set --public-url to the address clients use"
            );
            format!("http://127.0.0.1:{}", local.port())
        }
        None => format!("http://{local}"),
    };
    if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
        bail!("--public-url must start with http:// or https://");
    }
    let mut config = ServerConfig::new(&args.data_dir, public_url.clone());
    config.tokens = args.tokens.clone();
    config.url_ttl = args.url_ttl;
    config.session_ttl = args.session_ttl;
    config.max_object_size = args.max_object_size;
    config.body_idle_timeout = args.body_idle_timeout;
    if args.max_requests == 0 {
        bail!("--max-requests must be at least 1");
    }
    config.max_requests = args.max_requests;
    config.sweep_interval = args
        .sweep_interval
        .unwrap_or_else(|| (args.session_ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)));
    if config.sweep_interval.is_zero() || config.url_ttl.is_zero() || config.session_ttl.is_zero() {
        bail!("durations must be longer than zero");
    }
    config.processors = processors(&args)?;
    if args.processing_concurrency == 0 {
        bail!("--processing-concurrency must be at least 1");
    }
    config.processing_concurrency = args.processing_concurrency;
    config.processing_timeout = args.processing_timeout;
    config.events_idle_timeout = args.events_idle_timeout;
    config.events_keepalive = args.events_keepalive;
    config.rtc_bind = args.rtc_bind;
    config.rtc_udp_port = args.rtc_udp_port;
    config.rtc_public_ip = args.rtc_public_ip;
    config.rtc_max_peers = args.rtc_max_peers;
    config.ice_servers = args.ice_servers.clone();
    for entry in &args.room_tokens {
        let (room, token) = entry
            .split_once('=')
            .filter(|(r, t)| ferry_core::signal::valid_room(r) && !t.is_empty())
            .with_context(|| format!("--room-token {entry:?} is not ROOM=TOKEN"))?;
        config.room_tokens.entry(room.to_owned()).or_default().push(token.to_owned());
    }
    if args.signal_rate == 0 {
        bail!("--signal-rate must be at least 1");
    }
    config.signal_rate = args.signal_rate;
    config.cors_origins =
        args.cors_origins.iter().map(|o| o.trim().trim_end_matches('/').to_owned()).filter(|o| !o.is_empty()).collect();
    if args.webhook_secret.as_ref().is_some_and(|s| s.len() < 16) {
        bail!("--webhook-secret must be at least 16 characters");
    }
    config.webhooks.secret = args.webhook_secret.clone();
    config.webhooks.retry_for = args.webhook_retry_for;
    config.webhooks.allow_hosts =
        args.webhook_allow_hosts.iter().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()).collect();
    if config.processing_timeout.is_zero() || config.events_idle_timeout.is_zero() || config.events_keepalive.is_zero()
    {
        bail!("durations must be longer than zero");
    }
    let (server, data, token_place) = match &args.store {
        None => {
            let server = Server::open(config)
                .with_context(|| format!("cannot open the data dir {}", args.data_dir.display()))?;
            (server, args.data_dir.display().to_string(), args.data_dir.join("token").display().to_string())
        }
        Some(url) => {
            let credentials = S3Credentials::from_environment().map_err(anyhow::Error::msg)?;
            let mut s3 = S3Config::from_url(url, args.s3_region.clone(), credentials).map_err(anyhow::Error::msg)?;
            s3.endpoint = args.s3_endpoint.clone();
            s3.path_style = args.s3_path_style;
            s3.max_object_size = args.max_object_size;
            let store = S3Store::new(s3).map_err(anyhow::Error::msg)?;
            store.check().await.with_context(|| format!("cannot use the store {url}"))?;
            let bus = match &args.bus {
                Some(bus_url) => {
                    let (bus, inbox) =
                        ferry_redis::RedisBus::connect(bus_url, config.max_room_peers, Default::default())
                            .await
                            .with_context(|| format!("cannot use the bus {}", redact(bus_url)))?;
                    tracing::info!(instance = %ferry_bus::Bus::instance(bus.as_ref()), "joined the bus");
                    Some((bus as Arc<dyn ferry_bus::Bus>, inbox))
                }
                None => None,
            };
            let server = Server::shared(config, Arc::new(store), bus)
                .await
                .with_context(|| format!("cannot read or create the server's secrets in {url}"))?;
            (server, url.clone(), format!("the store ({url})"))
        }
    };

    let listening = format!("http://{local}");
    if listening == public_url {
        println!("ferry serve: listening on {listening} (data in {data})");
    } else {
        println!("ferry serve: listening on {listening} (signed URLs use {public_url}; data in {data})");
    }
    if let Some(udp) = server.bind_rtc().await.context("cannot open the WebRTC port")? {
        match args.rtc_public_ip {
            Some(ip) => println!("WebRTC peers on udp {udp}, offered to peers as {ip}:{}", udp.port()),
            None => println!("WebRTC peers on udp {udp}"),
        }
    }
    if args.tokens.is_empty() {
        let token = server.tokens().first().cloned().unwrap_or_default();
        println!("token kept in {token_place}");
        println!("upload with:  ferry put FILE --server {public_url} --token {token}");
    }
    server.serve(listener, shutdown_signal()).await.context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down: no new connections; finishing requests in flight");
}
