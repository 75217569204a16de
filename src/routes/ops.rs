//! Operations: liveness, readiness, metrics, API docs.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utoipa::ToSchema;

use super::resource;
use crate::error::ApiError;
use crate::service::Services;

/// Where Redis lives, when configured (readiness only checks it answers).
#[derive(Clone)]
pub struct RedisProbe(pub Option<String>);

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
    /// `ok` or `unavailable`.
    pub store: &'static str,
    /// `ok`, `unavailable`, or `not_configured`.
    pub redis: &'static str,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health)), security(()))]
pub async fn healthz() -> web::Json<Health> {
    web::Json(Health { status: "ok" })
}

/// Readiness: the store answers and, when configured, Redis answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)), security(()))]
pub async fn readyz(services: web::Data<Services>, redis: web::Data<RedisProbe>) -> HttpResponse {
    let store = match services.store_ready() {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(error = %e, "store not ready");
            "unavailable"
        }
    };
    let redis = match &redis.0 {
        None => "not_configured",
        Some(url) => {
            if ping_redis(url).await {
                "ok"
            } else {
                "unavailable"
            }
        }
    };
    let ready = store == "ok" && redis != "unavailable";
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        store,
        redis,
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Sends `PING` to the configured Redis with a short timeout.
async fn ping_redis(url: &str) -> bool {
    let Some(addr) = redis_addr(url) else {
        return false;
    };
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.ok()?;
        // +PONG, or -NOAUTH when a password is needed: either way Redis answered.
        Some(n > 0 && (buf[0] == b'+' || buf[0] == b'-'))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(250), attempt).await,
        Ok(Some(true))
    )
}

/// `redis://[user:pass@]host[:port][/db]` -> `host:port`.
fn redis_addr(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))?;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    if host_port.is_empty() {
        return None;
    }
    Some(if host_port.contains(':') && !host_port.ends_with(']') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    })
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

#[cfg(test)]
mod tests {
    use super::redis_addr;

    #[test]
    fn redis_urls_become_addresses() {
        assert_eq!(
            redis_addr("redis://127.0.0.1:6380/0").as_deref(),
            Some("127.0.0.1:6380")
        );
        assert_eq!(
            redis_addr("redis://:secret@cache/2").as_deref(),
            Some("cache:6379")
        );
        assert_eq!(redis_addr("http://x"), None);
    }
}
