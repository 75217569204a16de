//! Per-request plumbing: the request id (header, span, error bodies), the
//! request span, and the HTTP metrics.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const CANONICAL_ID_HEADER: &str = "canonical-customer-id";

use crate::telemetry::REQUEST;
pub use crate::telemetry::{current_request, RequestInfo};

/// A caller-supplied id is kept when it is short and plain, so a desk can
/// correlate its own logs with ours; anything else is replaced.
fn request_id_of(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| ulid::Ulid::new().to_string())
}

/// Records the customer a request is about on the request span.
pub fn note_customer(id: &impl std::fmt::Display) {
    tracing::Span::current().record("customer_id", tracing::field::display(id));
}

pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    // From here the service answers this request in its own time; the
    // connection's body limit no longer cuts it off (see `conn`).
    if let Some(held) = req.conn_data::<crate::conn::Held>() {
        held.hold();
    }
    let request_id = request_id_of(&req);
    // The route pattern, never the raw path: paths and queries can carry PII.
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    // Only standard methods become labels: arbitrary ones must not grow the metric space.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    };
    let info = RequestInfo {
        reads_only: matches!(method, "GET" | "HEAD"),
        request_id: request_id.clone(),
        path_and_query: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned()),
    };
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = method,
        route = %route,
        status = tracing::field::Empty,
        customer_id = tracing::field::Empty,
    );
    let result = REQUEST
        .scope(info, next.call(req))
        .instrument(span.clone())
        .await;
    let mut res = result?;
    let status = res.status();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    let elapsed = started.elapsed().as_secs_f64();
    span.record("status", status.as_u16());
    let status_label = status.as_u16().to_string();
    metrics::counter!("anamnesis_http_requests_total", "method" => method, "route" => route.clone(), "status" => status_label).increment(1);
    metrics::histogram!("anamnesis_http_request_duration_seconds", "method" => method, "route" => route).record(elapsed);
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                elapsed_ms = elapsed * 1e3,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                elapsed_ms = elapsed * 1e3,
                "request served"
            );
        }
    });
    Ok(res)
}
