//! The OpenAPI document, generated from the handlers and types. Served at
//! `/openapi.json` and committed as `openapi/openapi.json` (a test keeps the
//! two identical; `anamnesis openapi > openapi/openapi.json` regenerates it).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{ops, profiles, signals};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "anamnesis",
        description = "Unified customer profile service: identity signals from every channel resolved to one customer, served back as one profile and one context card.",
        license(name = "Apache-2.0")
    ),
    paths(
        signals::ingest,
        signals::ingest_batch,
        profiles::get_profile,
        profiles::lookup,
        profiles::context,
        profiles::context_by_identifier,
        profiles::timeline,
        profiles::patch_traits,
        profiles::add_answers,
        profiles::merge,
        profiles::erase,
        profiles::unmerge,
        profiles::history,
        profiles::remove_identifier,
        profiles::set_consent,
        profiles::suggestions,
        profiles::dismiss_suggestion,
        ops::healthz,
        ops::readyz,
        ops::metrics,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&BearerAuth),
    tags(
        (name = "ingest", description = "Identity signals from channels"),
        (name = "profiles", description = "The resolved customer"),
        (name = "context", description = "Context cards for desks and bots"),
        (name = "merges", description = "The identity ledger, unmerge, identifier removal"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document as served, pretty-printed with a trailing newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    text.push('\n');
    text
}
