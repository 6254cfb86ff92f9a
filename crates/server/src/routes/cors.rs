//! CORS for browser apps served from other origins (`--cors-origin`): a preflight `OPTIONS` on any
//! route answers 204 without a token; actual responses to an allowed origin carry
//! `Access-Control-Allow-Origin` and expose `ETag` (Uppy reads a part's ETag from its PUT). With no
//! origin configured nothing is added: ferry's own page is same-origin.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;

const ALLOW_METHODS: &str = "GET, HEAD, PUT, POST, DELETE, OPTIONS";
/// Named one by one: a `*` does not cover `Authorization`.
const ALLOW_HEADERS: &str = "authorization, content-type, content-md5, last-event-id, x-requested-with";
const EXPOSE_HEADERS: &str = "etag, location, retry-after, content-range, content-length";

fn allowed_origin(st: &AppState, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    st.config.cors_origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(text)).then(|| origin.clone())
}

pub(crate) async fn cors(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if st.config.cors_origins.is_empty() {
        return next.run(req).await;
    }
    let origin = allowed_origin(&st, req.headers());
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let Some(origin) = origin else {
            return ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", "this origin may not call this server")
                .into_response();
        };
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        return res;
    }
    let mut res = next.run(req).await;
    if let Some(origin) = origin {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    res
}
