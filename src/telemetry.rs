//! Logging: the set-up (`tracing` to stdout, as text or JSON lines, and the
//! audit log, target `audit`, as JSON lines of its own, to stdout or a file),
//! the request a task serves (its id goes into error bodies and audit
//! lines), and the audit line itself. Below every layer that logs: the HTTP
//! edge sets the request, the service and the edge write audit lines.

use std::sync::Mutex;

use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::fmt::{self, writer::BoxMakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{LogFormat, TelemetrySettings};
use crate::domain::CustomerId;

/// Installs the global subscriber. `RUST_LOG` wins over `telemetry.level` for
/// the ordinary logs; the audit log is always on. Safe to call more than once
/// (later calls are ignored), which tests rely on.
pub fn init(settings: &TelemetrySettings) -> std::io::Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let not_audit = filter_fn(|meta| meta.target() != TARGET);
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
            filter_fn(|meta| meta.target() == TARGET).with_max_level_hint(tracing::Level::INFO),
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

/// What error bodies and redirects need to know about the request being served.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub request_id: String,
    pub path_and_query: String,
    /// GET or HEAD: the request changes nothing.
    pub reads_only: bool,
}

tokio::task_local! {
    /// Set by the request middleware around each request it serves.
    pub static REQUEST: RequestInfo;
}

/// The request being served by this task, if any.
pub fn current_request() -> Option<RequestInfo> {
    REQUEST.try_with(Clone::clone).ok()
}

/// The `tracing` target of audit events.
pub const TARGET: &str = "audit";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Erase,
    Merge,
    Unmerge,
    RemoveIdentifier,
    Export,
    /// Profiles a signal merged (one line per absorbed profile).
    SignalMerge,
    /// Lookups by identifier refused once the subject's budget of misses
    /// was spent (at most one line a minute per subject).
    Lookup,
    /// A backup of the whole store was taken (or refused).
    Backup,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Erase => "erase",
            Action::Merge => "merge",
            Action::Unmerge => "unmerge",
            Action::RemoveIdentifier => "remove_identifier",
            Action::Export => "export",
            Action::SignalMerge => "merge_by_signal",
            Action::Lookup => "lookup",
            Action::Backup => "backup",
        }
    }
}

/// What the action touched besides the profile it was addressed to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Detail<'a> {
    /// The other profile of a merge (the source) or unmerge (the restored id).
    pub other_id: Option<CustomerId>,
    /// The type of a removed identifier (never its value).
    pub identifier_type: Option<&'a str>,
}

pub fn record_signal_merge(
    subject: &str,
    channel: Option<&str>,
    customer_id: CustomerId,
    other_id: CustomerId,
) {
    let detail = Detail {
        other_id: Some(other_id),
        identifier_type: None,
    };
    audit_line(
        subject,
        channel,
        Action::SignalMerge,
        Some(customer_id),
        detail,
        "ok",
    );
}

/// Writes one audit line (see [`crate::audit`]).
pub fn audit_line(
    who: &str,
    channel: Option<&str>,
    action: Action,
    customer_id: Option<CustomerId>,
    detail: Detail<'_>,
    outcome: &str,
) {
    let request_id = current_request().map(|r| r.request_id).unwrap_or_default();
    tracing::info!(
        target: TARGET,
        who,
        channel,
        action = action.as_str(),
        customer_id = customer_id.map(|id| id.to_string()),
        other_id = detail.other_id.map(|id| id.to_string()),
        identifier_type = detail.identifier_type,
        outcome,
        request_id = %request_id,
    );
}
