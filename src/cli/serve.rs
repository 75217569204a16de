//! `anamnesis serve` (the default): the service itself, until SIGTERM or
//! Ctrl-C, with the telemetry set up first.

use std::path::Path;

use anyhow::Context;

use crate::config::Settings;
use crate::startup::Application;

pub fn run(settings: Settings) -> anyhow::Result<()> {
    crate::telemetry::init(&settings.telemetry).with_context(|| {
        format!(
            "opening the audit log {}",
            settings
                .telemetry
                .audit_file
                .as_deref()
                .unwrap_or(Path::new("-"))
                .display()
        )
    })?;
    // The HTTP server runs on actix's system, which owns its workers and
    // its signal handling.
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings)?;
        if let Some(banner) = app.banner() {
            println!("{banner}");
        }
        app.run_until_stopped().await
    })
}
