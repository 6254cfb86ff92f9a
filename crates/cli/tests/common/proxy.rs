//! A fault-injecting TCP proxy on 127.0.0.1 for tests: it forwards bytes both ways, adds delay,
//! can cap each connection's rate, and resets connections (RST) at seeded random points.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Chance of a reset for each MiB a connection carries (either way).
    pub reset_per_mib: f64,
    /// Added before forwarding each chunk.
    pub delay: Duration,
    /// Bytes per second per connection and direction; 0 for no cap.
    pub rate: u64,
    /// The first connection to carry this many bytes is reset there, so a test is sure to see one.
    pub first_reset_at: Option<u64>,
    pub seed: u64,
}

impl Faults {
    pub const NONE: Faults =
        Faults { reset_per_mib: 0.0, delay: Duration::ZERO, rate: 0, first_reset_at: None, seed: 1 };
}

/// Counters shared by every connection of a proxy.
#[derive(Default)]
pub struct Counters {
    pub resets: AtomicU64,
    pub connections: AtomicU64,
    /// Bytes delivered to the upstream server.
    pub upstream_bytes: AtomicU64,
    first_reset_done: std::sync::atomic::AtomicBool,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    target: Arc<Mutex<Option<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl FaultProxy {
    pub async fn start(faults: Faults) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let counters = Arc::new(Counters::default());
        let (t, c) = (Arc::clone(&target), Arc::clone(&counters));
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let Some(to) = *t.lock().unwrap() else { continue };
                let n = c.connections.fetch_add(1, Ordering::Relaxed);
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(to).await else { return };
                    relay(client, server, faults, n, c).await;
                });
            }
        });
        FaultProxy { addr, counters, target, task }
    }

    pub fn set_target(&self, url: &str) {
        let host = url.strip_prefix("http://").unwrap().trim_end_matches('/');
        *self.target.lock().unwrap() = Some(host.parse().unwrap());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn resets(&self) -> u64 {
        self.counters.resets.load(Ordering::Relaxed)
    }

    pub fn upstream_bytes(&self) -> u64 {
        self.counters.upstream_bytes.load(Ordering::Relaxed)
    }
}

async fn relay(client: TcpStream, server: TcpStream, faults: Faults, n: u64, counters: Arc<Counters>) {
    // Linger 0: dropping a socket sends RST, as a broken middlebox would.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    let rng = Arc::new(Mutex::new(Rng(faults.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (n + 1))));
    let carried = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(Notify::new());
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up =
        pump(cr, sw, true, faults, Arc::clone(&rng), Arc::clone(&carried), Arc::clone(&stop), Arc::clone(&counters));
    let down = pump(sr, cw, false, faults, rng, carried, Arc::clone(&stop), counters);
    tokio::join!(up, down);
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    upstream: bool,
    faults: Faults,
    rng: Arc<Mutex<Rng>>,
    carried: Arc<AtomicU64>,
    stop: Arc<Notify>,
    counters: Arc<Counters>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = stop.notified() => return,
        };
        let before = carried.fetch_add(n as u64, Ordering::Relaxed);
        let mib_crossed = (before + n as u64) / (1 << 20) - before / (1 << 20);
        let mut reset = false;
        for _ in 0..mib_crossed {
            reset |= rng.lock().unwrap().unit() < faults.reset_per_mib;
        }
        if let Some(at) = faults.first_reset_at
            && before + n as u64 >= at
            && !counters.first_reset_done.swap(true, Ordering::Relaxed)
        {
            reset = true;
        }
        if reset {
            counters.resets.fetch_add(1, Ordering::Relaxed);
            // Forward part of the chunk, then cut both directions.
            if to.write_all(&buf[..n / 2]).await.is_ok() && upstream {
                counters.upstream_bytes.fetch_add((n / 2) as u64, Ordering::Relaxed);
            }
            stop.notify_one();
            return;
        }
        let mut wait = faults.delay;
        if faults.rate > 0 {
            wait += Duration::from_secs_f64(n as f64 / faults.rate as f64);
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if upstream {
            counters.upstream_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let _ = to.shutdown().await;
}
