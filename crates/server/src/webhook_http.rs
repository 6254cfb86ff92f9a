//! The HTTP client webhooks go out through (the service decides when and what; this only POSTs).

use async_trait::async_trait;
use ferry_service::{WebhookRequest, WebhookSender};

pub(crate) struct Http;

#[async_trait]
impl WebhookSender for Http {
    async fn post(&self, r: WebhookRequest) -> Result<u16, String> {
        // Connect only to the addresses the service checked, whatever the name resolves to later.
        let client = reqwest::Client::builder()
            .resolve_to_addrs(&r.host, &r.addrs)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(r.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let request = r.headers.iter().fold(client.post(&r.url), |req, (name, value)| req.header(*name, value));
        let res = request.body(r.body).send().await.map_err(|e| e.to_string())?;
        Ok(res.status().as_u16())
    }
}
