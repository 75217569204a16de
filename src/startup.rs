//! Wiring: open the store, build the services, bind the listener, mount the
//! routes and middleware.

use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use std::future::ready;

use actix_http::{error::DispatchError, Extensions, HttpService, KeepAlive};
use actix_service::{fn_service, map_config, ServiceFactoryExt};
use actix_web::dev::{AppConfig, Server};
use actix_web::middleware::{from_fn, Compress};
use actix_web::rt::net::TcpStream;
use actix_web::{web, App};
use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{
    default_secret, Authenticator, Concurrency, LookupBudget, RateLimiter, Scope, SecretSource,
};
use crate::config::Settings;
use crate::conn::DeadlineStream;
use crate::middleware::request_context;
use crate::routes;
use crate::routes::extract::{path_error_handler, query_error, BodyLimit, BodyTimeout};
use crate::service::Services;
use crate::store::Store;

/// Histogram buckets in seconds: fine below a millisecond, where reads live.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Lifetime of the admin token printed on first start.
const BANNER_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The process-wide metrics recorder (one per process, however many apps a
/// test starts).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours stays unused.
            let _ = metrics::set_global_recorder(recorder);
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .expect("the metrics upkeep thread starts");
            handle
        })
        .clone()
}

/// The configured store of `settings` (see [`crate::store::open`]).
pub fn open_store(settings: &Settings, create: bool) -> anyhow::Result<Arc<dyn Store>> {
    crate::store::open(&settings.storage, create)
}

pub struct Application {
    port: u16,
    server: Server,
    services: web::Data<Services>,
    banner: Option<String>,
}

impl Application {
    /// Opens the store and binds the listener (port 0 picks a free port).
    pub fn build(settings: Settings) -> anyhow::Result<Application> {
        let data_dir = settings.storage.path.clone();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let store = crate::store::open(&settings.storage, true)?;
        let (secret, source) =
            default_secret(&settings.auth, &data_dir).context("loading the auth secret")?;
        let authenticator = Arc::new(
            Authenticator::new(&settings.auth, secret.as_deref()).context("loading auth keys")?,
        );
        authenticator.watch_jwks();
        if !settings.auth.disabled && !authenticator.has_keys() {
            tracing::warn!(
                "no verification keys (the JWKS file holds none usable and no other key is configured): every token is refused until keys arrive"
            );
        }
        if !settings.storage.durable {
            tracing::warn!(
                "storage.durable = false: writes are acknowledged before they are on disk and a crash loses them (for measurements only)"
            );
        }
        if settings.auth.disabled {
            tracing::warn!("authentication is DISABLED by configuration (auth.disabled = true)");
        }

        let listener = TcpListener::bind(settings.listen_addr()?)
            .with_context(|| format!("binding {}", settings.server.listen))?;
        let address = listener.local_addr()?;
        let port = address.port();

        let banner = match &source {
            SecretSource::Generated(path) => {
                let ttl = BANNER_TOKEN_TTL
                    .min(Duration::from_secs(settings.auth.max_token_lifetime_secs));
                let token = authenticator
                    .mint("bootstrap-admin", &[Scope::Admin], None, ttl)
                    .context("minting the first-start token")?;
                Some(format!(
                    "anamnesis: generated an auth secret in {path}\n\
                     Admin token (valid {valid}; shown only now):\n\n  {token}\n\n\
                     Try it:\n\n  curl -H 'Authorization: Bearer {token}' http://{address}/v1/profiles/lookup?type=phone\\&value=0612345678\n",
                    path = path.display(),
                    valid = match ttl.as_secs() {
                        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
                        _ => humantime::format_duration(ttl).to_string(),
                    }
                ))
            }
            SecretSource::Configured | SecretSource::Existing(_) => None,
        };

        let services =
            web::Data::new(Services::new(&settings, store).context("starting the services")?);
        let authenticator = web::Data::from(authenticator);
        // Without authentication there are no subjects to tell apart: no
        // budgets (the request limit is skipped the same way).
        let mut limits = settings.limits.clone();
        if settings.auth.disabled {
            limits.signals_per_second = 0;
        }
        let limiter = web::Data::new(RateLimiter::new(&limits));
        let lookup_budget = web::Data::new(LookupBudget::new(&settings.limits));
        let exports = web::Data::new(routes::engagement::Exports(Concurrency::new(
            settings.limits.exports_per_subject,
        )));
        let prometheus = web::Data::new(metrics_handle());
        let single_limit = settings.server.max_body_bytes;
        let batch_limit = settings.server.max_batch_body_bytes;
        let body_timeout = BodyTimeout(Duration::from_millis(settings.server.body_timeout_ms));
        let openapi = crate::openapi::api_doc(&settings);

        let app_services = services.clone();
        let app = move || {
            App::new()
                .app_data(app_services.clone())
                .app_data(authenticator.clone())
                .app_data(limiter.clone())
                .app_data(lookup_budget.clone())
                .app_data(exports.clone())
                .app_data(prometheus.clone())
                .app_data(BodyLimit(single_limit))
                .app_data(body_timeout)
                .app_data(web::QueryConfig::default().error_handler(query_error))
                .app_data(web::PathConfig::default().error_handler(path_error_handler))
                .wrap(Compress::default())
                .wrap(from_fn(request_context))
                .configure(routes::ops::configure)
                .configure(routes::admin::configure)
                .configure(|cfg| routes::signals::configure(cfg, single_limit, batch_limit))
                .configure(routes::profiles::configure)
                .configure(routes::changes::configure)
                .configure(routes::engagement::configure)
                .configure(routes::console::configure)
                .service(
                    SwaggerUi::new("/docs/{_:.*}")
                        .external_url_unchecked("/openapi.json", openapi.clone()),
                )
                .default_service(web::to(routes::not_found))
        };
        let server_settings = settings.server.clone();
        // Every request of a connection gets the head and body deadlines,
        // not only the first (see `conn`).
        let head_limit = Duration::from_millis(server_settings.request_head_timeout_ms);
        // A second more for the body here, so that where a handler reads the
        // body it answers 408 itself before the connection is cut.
        let body_limit = Duration::from_millis(server_settings.body_timeout_ms + 1000);
        let mut builder =
            actix_server::Server::build().shutdown_timeout(settings.server.shutdown_timeout_secs);
        if settings.server.workers > 0 {
            builder = builder.workers(settings.server.workers);
        }
        // On SIGTERM, idle keep-alive connections close at once instead of
        // holding the shutdown until their keep-alive runs out.
        let shutdown = builder.graceful_shutdown_signal();
        // Event streams never end by themselves: end them when shutdown
        // starts, each with a last event saying where to resume.
        let closing = builder.graceful_shutdown_signal();
        let streams = services.clone();
        tokio::spawn(async move {
            closing.notified().await;
            streams.close_streams();
        });
        let server = builder
            .listen("anamnesis", listener, move || {
                let shutdown = shutdown.clone();
                let http = HttpService::build()
                    .graceful_shutdown_signal(move || {
                        let shutdown = shutdown.clone();
                        async move { shutdown.notified().await }
                    })
                    .client_request_timeout(Duration::from_millis(
                        server_settings.request_head_timeout_ms,
                    ))
                    .client_disconnect_timeout(Duration::from_secs(1))
                    .keep_alive(match server_settings.keep_alive_secs {
                        0 => KeepAlive::Disabled,
                        secs => KeepAlive::Timeout(Duration::from_secs(secs)),
                    })
                    .local_addr(address)
                    // The request context holds the connection's clock (see `conn`).
                    .on_connect_ext(|io: &DeadlineStream, ext: &mut Extensions| {
                        ext.insert(io.held());
                    })
                    .h1(map_config(app(), |_| AppConfig::default()));
                fn_service(move |io: TcpStream| {
                    let peer = io.peer_addr().ok();
                    // Small responses go out at once rather than waiting for Nagle.
                    let _ = io.set_nodelay(true);
                    ready(Ok::<_, DispatchError>((
                        DeadlineStream::new(io, head_limit, body_limit),
                        peer,
                    )))
                })
                .and_then(http)
            })?
            .run();
        tracing::info!(%address, "anamnesis listening");
        Ok(Application {
            port,
            server,
            services,
            banner,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The first-start message with a ready-to-use admin token, if this start
    /// generated the secret.
    pub fn banner(&self) -> Option<&str> {
        self.banner.as_deref()
    }

    /// Serves until SIGTERM or SIGINT, then finishes in-flight requests and
    /// makes every acknowledged write durable before returning.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        self.services
            .sync()
            .await
            .context("flushing the store at shutdown")?;
        tracing::info!("anamnesis stopped; store flushed");
        Ok(())
    }
}
