//! Operations: liveness, readiness, metrics, API docs.

use actix_web::{web, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use utoipa::ToSchema;

use super::resource;
use crate::error::ApiError;
use crate::service::Services;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", "GET").route(web::get().to(healthz)))
        .service(resource("/readyz", "GET").route(web::get().to(readyz)))
        .service(resource("/metrics", "GET").route(web::get().to(metrics)))
        .service(resource("/docs", "GET").route(web::get().to(docs_redirect)));
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    /// `ok`, or `unavailable`: the store cannot be read or cannot take
    /// writes (a full disk, a database out of reach); it recovers by itself
    /// once the cause is gone.
    pub store: &'static str,
    /// Why the store is unavailable (the engine's error), while it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "IO error: No space left on device (os error 28)")]
    pub reason: Option<String>,
    /// `ok`, `degraded` (down or slow: reads and writes go on without it,
    /// and the service reconnects by itself), or `not_configured`.
    pub redis: &'static str,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health)), security(()))]
pub async fn healthz() -> web::Json<Health> {
    web::Json(Health { status: "ok" })
}

/// Readiness: the store answers and takes writes. Redis is reported but
/// never makes the service unready: it is a cache.
///
/// A store that only reads is not ready: a load balancer should send
/// writes elsewhere, and an operator sees why in `reason`.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)), security(()))]
pub async fn readyz(services: web::Data<Services>) -> HttpResponse {
    let (store, reason) = match services.store_ready() {
        Ok(()) => ("ok", None),
        Err(e) => {
            tracing::warn!(error = %e, "store not ready");
            ("unavailable", Some(e.to_string()))
        }
    };
    // Redis is a cache: without it the service serves from the store.
    let redis = services.redis_state();
    let ready = store == "ok";
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        store,
        reason,
        redis,
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")), security(()))]
pub async fn metrics(handle: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

async fn docs_redirect() -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::PermanentRedirect()
        .insert_header((actix_web::http::header::LOCATION, "/docs/"))
        .finish())
}
