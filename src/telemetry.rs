//! Logging set-up: `tracing` to stdout, as text or JSON lines.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, TelemetrySettings};

/// Installs the global subscriber. `RUST_LOG` wins over `telemetry.level`.
/// Safe to call more than once (later calls are ignored), which tests rely on.
pub fn init(settings: &TelemetrySettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let result = match settings.format {
        LogFormat::Json => fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .try_init(),
        LogFormat::Text => fmt().with_env_filter(filter).try_init(),
    };
    // Already installed (tests spawn many apps in one process): keep the first.
    drop(result);
}
