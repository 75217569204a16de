//! `anamnesis openapi`: the OpenAPI document as the service serves it at
//! `/openapi.json` (the file `openapi/openapi.json` is this output).

use crate::config::Settings;

pub fn run(settings: &Settings) -> anyhow::Result<()> {
    print!("{}", crate::openapi::document(settings));
    Ok(())
}
