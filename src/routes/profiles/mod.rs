//! Profiles: read, look up, context cards, timeline, trait and answer writes,
//! manual merge, erasure.
//!
//! The routes are registered here; the handlers live in `read` (profiles,
//! context cards, the timeline), `write` (traits, answers, consent,
//! erasure) and `identity` (merge, unmerge, the ledger, identifier
//! removal, merge suggestions).

mod identity;
mod read;
mod write;

use actix_web::web;

use super::resource;
use crate::domain::CustomerId;
use crate::error::ApiError;
use crate::middleware::note_customer;
use crate::service::profiles::MAX_PAGE;

// Globs: `openapi.rs` names each handler here, and needs the `__path_*`
// struct `#[utoipa::path]` generates beside it.
pub use identity::*;
pub use read::*;
pub use write::*;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // `lookup` before `{customer_id}`: resources match in registration order.
    cfg.service(resource("/v1/profiles/lookup", "GET").route(web::get().to(lookup)))
        .service(resource("/v1/context", "GET").route(web::get().to(context_by_identifier)))
        .service(
            resource("/v1/profiles/{customer_id}", "GET, DELETE")
                .route(web::get().to(get_profile))
                .route(web::delete().to(erase)),
        )
        .service(
            resource("/v1/profiles/{customer_id}/context", "GET").route(web::get().to(context)),
        )
        .service(
            resource("/v1/profiles/{customer_id}/timeline", "GET").route(web::get().to(timeline)),
        )
        .service(
            resource("/v1/profiles/{customer_id}/traits", "PATCH")
                .route(web::patch().to(patch_traits)),
        )
        .service(
            resource("/v1/profiles/{customer_id}/answers", "POST")
                .route(web::post().to(add_answers)),
        )
        .service(resource("/v1/profiles/{target_id}/merge", "POST").route(web::post().to(merge)))
        .service(
            resource("/v1/profiles/{customer_id}/unmerge", "POST").route(web::post().to(unmerge)),
        )
        .service(
            resource("/v1/profiles/{customer_id}/history", "GET").route(web::get().to(history)),
        )
        .service(
            resource(
                "/v1/profiles/{customer_id}/identifiers/{type}/{value}",
                "DELETE",
            )
            .route(web::delete().to(remove_identifier)),
        )
        .service(
            resource("/v1/profiles/{customer_id}/consents/{purpose}", "PUT")
                .route(web::put().to(set_consent)),
        )
        .service(
            resource("/v1/profiles/{customer_id}/suggestions", "GET")
                .route(web::get().to(suggestions)),
        )
        .service(
            resource(
                "/v1/profiles/{customer_id}/suggestions/{other_id}",
                "DELETE",
            )
            .route(web::delete().to(dismiss_suggestion)),
        );
}

pub(crate) fn customer_id(raw: &str) -> Result<CustomerId, ApiError> {
    let id = CustomerId::parse(raw)?;
    note_customer(&id);
    Ok(id)
}

/// A page size of the timeline or the ledger: 1 to [`MAX_PAGE`] when given.
fn check_page_limit(limit: Option<usize>) -> Result<(), ApiError> {
    match limit {
        Some(n) if n == 0 || n > MAX_PAGE => Err(ApiError::InvalidQuery(format!(
            "limit must be 1 to {MAX_PAGE}"
        ))),
        _ => Ok(()),
    }
}
