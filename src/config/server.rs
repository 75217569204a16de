//! `[server]` and `[telemetry]`: the HTTP listener and its limits, and logs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    pub max_body_bytes: usize,
    pub max_batch_body_bytes: usize,
    pub max_batch_signals: usize,
    pub shutdown_timeout_secs: u64,
    /// Time a client has to send the request line and headers.
    pub request_head_timeout_ms: u64,
    /// Time a client has to send the body once the headers arrived.
    pub body_timeout_ms: u64,
    /// How long an idle keep-alive connection stays open.
    pub keep_alive_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub format: LogFormat,
    pub level: String,
    /// Where the audit log goes; unset: stdout, beside the other logs.
    #[serde(default)]
    pub audit_file: Option<PathBuf>,
}
