//! Webhooks: when an upload completes, gets its final processing result, fails, is cancelled or
//! expires, the server POSTs the event to the `webhook_url` the client gave at create.
//!
//! Each delivery is signed so the receiver can trust it: `Ferry-Webhook-Timestamp` (Unix seconds)
//! and `Ferry-Webhook-Signature: v1=HEX` ([`ferry_core::sign::webhook_signature`]: the
//! HMAC-SHA256 under the server's `--webhook-secret` of `"{timestamp}.{body}"`). A receiver
//! recomputes it, compares in constant time and refuses old timestamps. A delivery that does not get a 2xx is retried with exponential backoff (1 s, 2 s,
//! 4 s, … capped at a minute) for up to `retry_for`; each attempt and the outcome are kept in the
//! store (`webhooks/{upload_id}`), shown in the upload's status, and resumed after a restart.
//!
//! With several instances, each delivery is made by one at a time: whoever holds its lease on
//! the bus (`webhook:{upload_id}:{event_id}`, taken for one attempt and the wait after it) makes
//! the next attempt, and every instance's background sweep ([`Webhooks::resume`]) takes over the
//! deliveries whose holder died once their lease lapses. With the bus unreachable, the instance
//! that started a delivery keeps going (a webhook twice beats none) and no one takes over.
//!
//! Only http(s) URLs are accepted. The host must be on the allow-list when there is one; link-local
//! addresses (169.254.0.0/16, fe80::/10 — where cloud metadata services answer) are refused unless
//! listed, and the check is made on the addresses the name resolves to at delivery, which are then
//! the only ones a [`WebhookSender`] may connect to. The sender is the HTTP client, given by the
//! caller: this crate speaks no HTTP itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use async_trait::async_trait;
use ferry_core::api::{DeliveryState, WebhookAttempt, WebhookDelivery, WebhookStatus};
use ferry_core::events::EventRecord;
use ferry_store::{Condition, Store, StoreError};
use serde::{Deserialize, Serialize};

use ferry_bus::Bus;

use crate::clock::Clock;

/// How webhooks are sent.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Signs every delivery; without it, uploads cannot ask for webhooks.
    pub secret: Option<String>,
    /// How long a delivery is retried.
    pub retry_for: Duration,
    /// Hosts webhooks may go to (`example.com`, or `.example.com` for it and its subdomains);
    /// empty: any host but link-local addresses.
    pub allow_hosts: Vec<String>,
    /// Each attempt's limit.
    pub attempt_timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            secret: None,
            retry_for: Duration::from_secs(3600),
            allow_hosts: Vec::new(),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

/// A map of per-key async locks; entries nobody holds are dropped as the map grows.
#[derive(Default)]
pub(crate) struct KeyedLocks(std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    pub(crate) fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 1024 {
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(map.entry(key.to_owned()).or_default())
    }
}

/// Attempts kept per delivery in the status.
const KEPT_ATTEMPTS: usize = 20;
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(60);
/// Time for recording an attempt, beyond the attempt itself.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// What is kept per upload: the status shown to clients, and each delivery's body, so a restart
/// re-sends the same bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WebhookRecord {
    #[serde(flatten)]
    status: WebhookStatus,
    bodies: BTreeMap<u64, String>,
}

fn record_name(upload_id: &str) -> String {
    format!("webhooks/{upload_id}")
}

fn lease_name(upload_id: &str, event_id: u64) -> String {
    format!("webhook:{upload_id}:{event_id}")
}

/// Why a `webhook_url` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookUrlError {
    #[error("this server delivers no webhooks (it has no --webhook-secret)")]
    Unsupported,
    #[error("webhook_url {url:?}: {why}")]
    Invalid { url: String, why: String },
}

/// Checks a `webhook_url` given at create; returns it normalised.
pub fn check_url(config: &WebhookConfig, raw: &str) -> Result<String, WebhookUrlError> {
    if config.secret.is_none() {
        return Err(WebhookUrlError::Unsupported);
    }
    let bad = |why: &str| WebhookUrlError::Invalid { url: raw.to_owned(), why: why.to_owned() };
    if raw.len() > 2048 {
        return Err(bad("longer than 2048 bytes"));
    }
    let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http and https URLs are accepted"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the URL are not accepted"));
    }
    let host = url.host_str().ok_or_else(|| bad("it has no host"))?;
    if !host_allowed(config, host) {
        return Err(bad("the host is not on this server's webhook allow-list"));
    }
    if let Some(ip) = literal_ip(host)
        && !ip_allowed(config, host, ip)
    {
        return Err(bad("link-local addresses are refused"));
    }
    Ok(url.to_string())
}

fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

fn host_allowed(config: &WebhookConfig, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    config.allow_hosts.is_empty()
        || config.allow_hosts.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            match a.strip_prefix('.') {
                Some(domain) => host == domain || host.ends_with(&a),
                None => host == a,
            }
        })
}

/// Link-local addresses (cloud metadata services) only when the operator listed the host.
fn ip_allowed(config: &WebhookConfig, host: &str, ip: IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    };
    !link_local || config.allow_hosts.iter().any(|a| a.eq_ignore_ascii_case(host.trim_matches(['[', ']'])))
}

/// One delivery attempt, as the HTTP client is to make it.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub url: String,
    /// The URL's host name, and the only addresses it may be reached at (checked already).
    pub host: String,
    pub addrs: Vec<SocketAddr>,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub timeout: Duration,
}

/// Makes delivery attempts: a POST with the request's headers and body, to the request's
/// addresses only, following no redirect.
#[async_trait]
pub trait WebhookSender: Send + Sync + 'static {
    /// The HTTP status, or why there was none.
    async fn post(&self, request: WebhookRequest) -> Result<u16, String>;
}

pub struct Webhooks {
    store: Arc<dyn Store>,
    config: WebhookConfig,
    clock: Arc<dyn Clock>,
    sender: Arc<dyn WebhookSender>,
    bus: Arc<dyn Bus>,
    locks: KeyedLocks,
}

impl Webhooks {
    pub fn new(
        store: Arc<dyn Store>,
        config: WebhookConfig,
        clock: Arc<dyn Clock>,
        sender: Arc<dyn WebhookSender>,
        bus: Arc<dyn Bus>,
    ) -> Webhooks {
        Webhooks { store, config, clock, sender, bus, locks: KeyedLocks::default() }
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    async fn load(&self, upload_id: &str) -> Result<Option<(WebhookRecord, String)>, StoreError> {
        match self.store.get_record(&record_name(upload_id)).await? {
            Some(r) => {
                let record = serde_json::from_slice(&r.bytes)
                    .map_err(|e| StoreError::Corrupt(format!("webhook record {upload_id}: {e}")))?;
                Ok(Some((record, r.version)))
            }
            None => Ok(None),
        }
    }

    pub async fn status(&self, upload_id: &str) -> Result<Option<WebhookStatus>, StoreError> {
        Ok(self.load(upload_id).await?.map(|(r, _)| r.status))
    }

    /// Changes an upload's webhook record under a per-upload lock and a conditional write.
    async fn update(&self, upload_id: &str, mut change: impl FnMut(&mut WebhookRecord)) -> Result<(), StoreError> {
        let lock = self.locks.get(upload_id);
        let _held = lock.lock().await;
        for _ in 0..8 {
            let Some((mut record, version)) = self.load(upload_id).await? else { return Ok(()) };
            change(&mut record);
            let bytes = serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            match self.store.put_record(&record_name(upload_id), bytes, Condition::IfMatch(version)).await {
                Err(StoreError::ConditionFailed) => continue,
                other => return other.map(|_| ()),
            }
        }
        Err(StoreError::ConditionFailed)
    }

    /// Records a delivery of `event` to `url` and sends it in the background.
    pub async fn deliver(self: &Arc<Self>, upload_id: &str, key: &str, url: &str, event: &EventRecord) {
        let Some(secret) = self.config.secret.clone() else { return };
        let body = serde_json::json!({ "upload_id": upload_id, "key": key, "event": event }).to_string();
        let delivery = WebhookDelivery {
            event_id: event.id,
            kind: event.event.kind().to_owned(),
            state: DeliveryState::Pending,
            attempts: 0,
            recent: Vec::new(),
            give_up_at: event.at + self.config.retry_for,
        };
        let name = record_name(upload_id);
        let first = WebhookRecord {
            status: WebhookStatus { url: url.to_owned(), deliveries: vec![delivery.clone()] },
            bodies: BTreeMap::from([(event.id, body.clone())]),
        };
        let recorded = match serde_json::to_vec(&first) {
            Ok(bytes) => match self.store.put_record(&name, bytes, Condition::IfAbsent).await {
                Err(StoreError::ConditionFailed) => {
                    self.update(upload_id, |r| {
                        if !r.status.deliveries.iter().any(|d| d.event_id == event.id) {
                            r.status.deliveries.push(delivery.clone());
                            r.bodies.insert(event.id, body.clone());
                        }
                    })
                    .await
                }
                other => other.map(|_| ()),
            },
            Err(e) => Err(StoreError::Corrupt(e.to_string())),
        };
        // Unrecorded, the delivery goes on from memory, on this instance only.
        let unrecorded = recorded
            .inspect_err(
                |e| tracing::warn!(upload_id, error = %e, "could not record a webhook delivery; sending it anyway"),
            )
            .err()
            .map(|_| delivery);
        let this = Arc::clone(self);
        let (upload_id, url) = (upload_id.to_owned(), url.to_owned());
        let id = event.id;
        tokio::spawn(async move { this.send_until_done(upload_id, url, id, body, secret, false, unrecorded).await });
    }

    /// Takes over every pending delivery no instance is making (after a restart, or when the
    /// instance making it died); returns how many it took. Deliveries in hand are left alone.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, StoreError> {
        let Some(secret) = self.config.secret.clone() else { return Ok(0) };
        let mut taken = 0;
        for name in self.store.list_records("webhooks/").await? {
            let Some(upload_id) = name.strip_prefix("webhooks/") else { continue };
            let Some((record, _)) = self.load(upload_id).await? else { continue };
            for d in record.status.deliveries.iter().filter(|d| d.state == DeliveryState::Pending) {
                let Some(body) = record.bodies.get(&d.event_id).cloned() else { continue };
                let lease = lease_name(upload_id, d.event_id);
                if !self.bus.try_lease(&lease, self.lease_ttl()).await.unwrap_or(false) {
                    continue;
                }
                taken += 1;
                let this = Arc::clone(self);
                let (upload_id, url, secret, id) =
                    (upload_id.to_owned(), record.status.url.clone(), secret.clone(), d.event_id);
                tokio::spawn(async move { this.send_until_done(upload_id, url, id, body, secret, true, None).await });
            }
        }
        Ok(taken)
    }

    /// A lease covers one attempt, its record and the longest wait before the next.
    fn lease_ttl(&self) -> Duration {
        self.config.attempt_timeout + MAX_DELAY + LEASE_MARGIN
    }

    /// Makes attempts while this instance holds the delivery's lease; `leased` when it holds it
    /// already. Each attempt starts from the record, so a delivery taken over carries on its
    /// schedule; `unrecorded` is the delivery when it could not be recorded.
    #[allow(clippy::too_many_arguments)]
    async fn send_until_done(
        &self,
        upload_id: String,
        url: String,
        event_id: u64,
        body: String,
        secret: String,
        mut leased: bool,
        mut unrecorded: Option<WebhookDelivery>,
    ) {
        let lease = lease_name(&upload_id, event_id);
        loop {
            if !leased {
                match self.bus.try_lease(&lease, self.lease_ttl()).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => tracing::debug!(upload_id, error = %e, "no webhook lease; delivering anyway"),
                }
            }
            leased = false;
            let delivery = match self.load(&upload_id).await {
                Ok(record) => record
                    .and_then(|(r, _)| r.status.deliveries.into_iter().find(|d| d.event_id == event_id))
                    .or_else(|| unrecorded.clone()),
                Err(e) => {
                    // The record says where the delivery stands; the next sweep carries it on.
                    tracing::warn!(upload_id, error = %e, "could not read a webhook record; leaving it to the sweep");
                    None
                }
            };
            let Some(delivery) = delivery.filter(|d| d.state == DeliveryState::Pending) else {
                self.release(&lease).await;
                return;
            };
            let attempt = delivery.attempts + 1;
            if let Some(d) = unrecorded.as_mut() {
                d.attempts = attempt;
            }
            let result = self.attempt(&url, &upload_id, delivery.event_id, &body, &secret).await;
            let now = self.clock.now();
            let (status, error) = match result {
                Ok(code) => (Some(code), None),
                Err(e) => (None, Some(e)),
            };
            let delivered = status.is_some_and(|c| (200..300).contains(&c));
            let give_up = !delivered && now >= delivery.give_up_at;
            let outcome = WebhookAttempt { at: now, status, error };
            tracing::debug!(upload_id, event = delivery.event_id, ?outcome, "webhook attempt");
            let id = delivery.event_id;
            let saved = self
                .update(&upload_id, |r| {
                    if let Some(d) = r.status.deliveries.iter_mut().find(|d| d.event_id == id) {
                        d.attempts = attempt;
                        d.recent.push(outcome.clone());
                        if d.recent.len() > KEPT_ATTEMPTS {
                            d.recent.remove(0);
                        }
                        d.state = match (delivered, give_up) {
                            (true, _) => DeliveryState::Delivered,
                            (false, true) => DeliveryState::Failed,
                            (false, false) => DeliveryState::Pending,
                        };
                    }
                })
                .await;
            if let Err(e) = saved {
                tracing::warn!(upload_id, error = %e, "could not record a webhook attempt");
            }
            if delivered || give_up {
                if give_up {
                    tracing::warn!(upload_id, %url, attempts = attempt, "gave up delivering a webhook");
                }
                self.release(&lease).await;
                return;
            }
            let delay = FIRST_DELAY.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(MAX_DELAY);
            let left = (delivery.give_up_at - now).try_into().unwrap_or(Duration::ZERO);
            self.clock.sleep(delay.min(left)).await;
            self.release(&lease).await;
        }
    }

    async fn release(&self, lease: &str) {
        if let Err(e) = self.bus.release(lease).await {
            tracing::debug!(lease, error = %e, "the webhook lease will lapse instead");
        }
    }

    /// One POST; the HTTP status, or why there was none.
    async fn attempt(
        &self,
        url: &str,
        upload_id: &str,
        event_id: u64,
        body: &str,
        secret: &str,
    ) -> Result<u16, String> {
        let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
        let host = parsed.host_str().ok_or("the URL has no host")?.to_owned();
        let port = parsed.port_or_known_default().ok_or("the URL has no port")?;
        let lookup = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((lookup.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        let addrs: Vec<SocketAddr> = addrs.into_iter().filter(|a| ip_allowed(&self.config, &host, a.ip())).collect();
        if addrs.is_empty() {
            return Err(format!("{host} resolves only to refused (link-local) addresses"));
        }
        let timestamp = self.clock.now().unix_timestamp();
        let signature = ferry_core::sign::webhook_signature(secret.as_bytes(), timestamp, body.as_bytes());
        let request = WebhookRequest {
            url: url.to_owned(),
            host: lookup,
            addrs,
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("user-agent", concat!("ferry/", env!("CARGO_PKG_VERSION")).to_owned()),
                ("ferry-webhook-id", format!("{upload_id}-{event_id}")),
                ("ferry-webhook-timestamp", timestamp.to_string()),
                ("ferry-webhook-signature", signature),
            ],
            body: body.to_owned(),
            timeout: self.config.attempt_timeout,
        };
        self.sender.post(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow: &[&str]) -> WebhookConfig {
        WebhookConfig {
            secret: Some("s".into()),
            allow_hosts: allow.iter().map(|s| s.to_string()).collect(),
            ..WebhookConfig::default()
        }
    }

    #[test]
    fn urls() {
        let open = config(&[]);
        assert!(check_url(&open, "http://127.0.0.1:9/hook").is_ok());
        assert!(check_url(&open, "https://example.com/x?y=1").is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://user:pw@example.com/",
            "not a url",
            "http://",
            // 169.254.169.254 written as one number.
            "http://2852039166/",
        ] {
            let e = check_url(&open, bad).unwrap_err();
            assert!(matches!(e, WebhookUrlError::Invalid { .. }), "{bad}");
        }
        let listed = config(&[".example.com", "169.254.169.254"]);
        assert!(check_url(&listed, "https://hooks.example.com/").is_ok());
        assert!(check_url(&listed, "https://example.com/").is_ok());
        assert!(check_url(&listed, "http://169.254.169.254/").is_ok(), "listed explicitly");
        assert!(check_url(&listed, "https://example.org/").is_err());
        assert!(check_url(&listed, "https://badexample.com/").is_err());
        let none = WebhookConfig::default();
        assert_eq!(check_url(&none, "http://127.0.0.1/").unwrap_err(), WebhookUrlError::Unsupported);
    }
}
