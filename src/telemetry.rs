//! Logging set-up: `tracing` to stdout, as text or JSON lines, and the audit
//! log (target `audit`) as JSON lines of its own, to stdout or a file.

use std::sync::Mutex;

use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::fmt::{self, writer::BoxMakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::audit;
use crate::config::{LogFormat, TelemetrySettings};

/// Installs the global subscriber. `RUST_LOG` wins over `telemetry.level` for
/// the ordinary logs; the audit log is always on. Safe to call more than once
/// (later calls are ignored), which tests rely on.
pub fn init(settings: &TelemetrySettings) -> std::io::Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let not_audit = filter_fn(|meta| meta.target() != audit::TARGET);
    let logs = match settings.format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => fmt::layer().boxed(),
    }
    // The level filter goes outermost: its level is the hint that sets the
    // global maximum (see the audit log below).
    .with_filter(not_audit)
    .with_filter(filter);

    let writer = match &settings.audit_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            BoxMakeWriter::new(Mutex::new(file))
        }
        None => BoxMakeWriter::new(std::io::stdout),
    };
    let audit_log = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_level(false)
        .with_writer(writer)
        // The hint keeps the global level at `info` at most for the audit
        // log's sake: without it every `trace!` anywhere (sled logs plenty
        // on the write path) would be built and offered to the filters.
        .with_filter(
            filter_fn(|meta| meta.target() == audit::TARGET)
                .with_max_level_hint(tracing::Level::INFO),
        );

    // Already installed (tests spawn many apps in one process): keep the first.
    drop(
        tracing_subscriber::registry()
            .with(logs)
            .with(audit_log)
            .try_init(),
    );
    Ok(())
}
