//! `PUT /p/{upload_id}/{n}?expires=…&signature=…`: the data plane. Authorized by the URL's
//! signature alone, so a client can be handed the URL without the token.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::put;
use ferry_core::sign::Scope;

use super::uploads::{content_length, parse_part_number};
use super::{part_body, part_put_response};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Path, Query};

pub(super) fn signed_routes() -> Router<Arc<AppState>> {
    Router::new().route("/p/{id}/{n}", put(put_signed).layer(DefaultBodyLimit::disable()))
}

/// The query of every signed URL.
#[derive(serde::Deserialize)]
pub(super) struct SignatureQuery {
    expires: Option<String>,
    signature: Option<String>,
}

impl SignatureQuery {
    /// Checks the signature for `method` on `scope` now.
    pub(super) fn verify(&self, st: &AppState, method: &str, scope: Scope<'_>) -> Result<(), ApiError> {
        let now = u64::try_from(st.service.now().unix_timestamp()).unwrap_or(0);
        st.signer.verify_query(method, scope, self.expires.as_deref(), self.signature.as_deref(), now)?;
        Ok(())
    }
}

async fn put_signed(
    State(st): State<Arc<AppState>>,
    Path((id, n)): Path<(String, String)>,
    Query(q): Query<SignatureQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let n = parse_part_number(&n)?;
        q.verify(&st, "PUT", Scope::Part { upload_id: &id, part_number: n })?;
        let len = content_length(&headers)?;
        let body = part_body(body, st.metrics.service.clone(), st.config.body_idle_timeout);
        Ok(st.service.put_part(&id, n, len, body).await?)
    };
    part_put_response(result.await)
}
