//! `anamnesis export`: every profile as NDJSON, as the API shows it with
//! `pii:read`, from a stopped store, with a count on standard error.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Settings;
use crate::service::engagement::export_profiles;

pub fn run(settings: &Settings, out: Option<&Path>) -> anyhow::Result<()> {
    let store = crate::store::open(&settings.storage, false)?;
    let mut sink: Box<dyn Write> = match out {
        Some(path) => Box::new(BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let started = Instant::now();
    let mut last_report = started;
    let written = export_profiles(&*store, settings, &mut sink, &mut |n| {
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprint!("\rexported {n} profiles");
        }
    })?;
    eprintln!(
        "\rexported {written} profiles in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
