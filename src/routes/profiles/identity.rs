//! Who is who: manual merge and unmerge, the identity ledger, detaching an
//! identifier, and merge suggestions.

use actix_web::{web, HttpRequest, HttpResponse};

use super::{check_page_limit, customer_id};
use crate::audit::{self, Action, Detail};
use crate::auth::{
    Authorized, DismissSuggestions, MergeProfiles, ReadIdentity, RemoveIdentifiers, Scope,
    UnmergeProfiles,
};
use crate::domain::names::IdentifierType;
use crate::domain::CustomerId;
use crate::error::{ApiError, ErrorBody};
use crate::routes::extract::JsonBody;
use crate::routes::inputs::{HistoryParams, MergeInput, UnmergeInput};
use crate::routes::keyed::idempotent;
use crate::service::views::{HistoryPage, ProfileView, SuggestionView, UnmergeResult};
use crate::service::Services;

/// Confirmed manual merge of `source_id` into the target.
#[utoipa::path(
    post, path = "/v1/profiles/{target_id}/merge", tag = "profiles",
    params(("target_id" = CustomerId, Path, description = "The surviving profile")),
    request_body = MergeInput,
    responses(
        (status = 200, description = "The merged profile", body = ProfileView),
        (status = 308, description = "The target was merged into another profile", body = ErrorBody),
        (status = 409, description = "Limits forbid the merge", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn merge(
    req: HttpRequest,
    auth: Authorized<MergeProfiles>,
    services: web::Data<Services>,
    path: web::Path<String>,
    JsonBody(input): JsonBody<MergeInput>,
) -> Result<HttpResponse, ApiError> {
    idempotent(&req, &auth.principal, &services, async {
        let target = customer_id(&path)?;
        let source = CustomerId::parse(&input.source_id)
            .map_err(|e| ApiError::InvalidField(format!("source_id: {e}")))?;
        let result = services
            .merge(
                target,
                source,
                crate::routes::caller(&auth.principal),
                auth.principal.access(),
            )
            .await
            .map_err(ApiError::from);
        let detail = Detail {
            other_id: Some(source),
            ..Detail::default()
        };
        audit::record(&auth.principal, Action::Merge, target, detail, &result);
        Ok(web::Json(result?))
    })
    .await
}

/// Undo a merge: restore an absorbed profile under its own id.
#[utoipa::path(
    post, path = "/v1/profiles/{customer_id}/unmerge", tag = "merges",
    params(("customer_id" = CustomerId, Path, description = "The profile that absorbed the other")),
    request_body = UnmergeInput,
    responses(
        (status = 200, description = "Both profiles after the unmerge", body = UnmergeResult),
        (status = 308, description = "Merged into another profile", body = ErrorBody),
        (status = 409, description = "nothing_to_unmerge: merged_id is not merged into this profile", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn unmerge(
    req: HttpRequest,
    auth: Authorized<UnmergeProfiles>,
    services: web::Data<Services>,
    path: web::Path<String>,
    JsonBody(input): JsonBody<UnmergeInput>,
) -> Result<HttpResponse, ApiError> {
    idempotent(&req, &auth.principal, &services, async {
        let id = customer_id(&path)?;
        let merged = CustomerId::parse(&input.merged_id)
            .map_err(|e| ApiError::InvalidField(format!("merged_id: {e}")))?;
        let result = services
            .unmerge(
                id,
                merged,
                crate::routes::caller(&auth.principal),
                auth.principal.access(),
            )
            .await
            .map_err(ApiError::from);
        let detail = Detail {
            other_id: Some(merged),
            ..Detail::default()
        };
        audit::record(&auth.principal, Action::Unmerge, id, detail, &result);
        let (survivor, restored) = result?;
        Ok(web::Json(UnmergeResult { survivor, restored }))
    })
    .await
}

/// A profile's identity ledger: created, identifiers added and removed,
/// merges in and out, unmerges, erasure. Newest first. Needs `profiles:read`
/// and `pii:read`: who was linked to whom is personal data, and an
/// identifier's comings and goings would tell who else holds it.
#[utoipa::path(
    get, path = "/v1/profiles/{customer_id}/history", tag = "merges",
    params(("customer_id" = CustomerId, Path, description = "Any id, live, absorbed or erased"), HistoryParams),
    responses(
        (status = 200, body = HistoryPage),
    ),
    security(("bearer" = []))
)]
pub async fn history(
    auth: Authorized<ReadIdentity>,
    services: web::Data<Services>,
    path: web::Path<String>,
    query: web::Query<HistoryParams>,
) -> Result<web::Json<HistoryPage>, ApiError> {
    auth.principal.require(Scope::ProfilesRead)?;
    let id = customer_id(&path)?;
    check_page_limit(query.limit)?;
    Ok(web::Json(services.history(
        id,
        &query.into_inner().into(),
        auth.principal.access(),
    )?))
}

/// Detach a wrongly linked identifier (a shared phone, a test address).
#[utoipa::path(
    delete, path = "/v1/profiles/{customer_id}/identifiers/{type}/{value}", tag = "merges",
    params(
        ("customer_id" = CustomerId, Path, description = "The customer id"),
        ("type" = IdentifierType, Path, description = "Identifier type"),
        ("value" = String, Path, min_length = 1, max_length = 256, description = "Identifier value, URL-encoded; normalised like any other"),
    ),
    responses(
        (status = 200, description = "The profile without the identifier", body = ProfileView),
        (status = 308, description = "Merged into another profile", body = ErrorBody),
        (status = 404, description = "No such profile, or the identifier is not on it", body = ErrorBody),
        (status = 422, description = "Unknown type, or a value the type's normaliser refuses", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn remove_identifier(
    req: HttpRequest,
    auth: Authorized<RemoveIdentifiers>,
    services: web::Data<Services>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    idempotent(&req, &auth.principal, &services, async {
        let (raw_id, kind, value) = path.into_inner();
        let id = customer_id(&raw_id)?;
        let result = services
            .remove_identifier(
                id,
                kind.clone(),
                value,
                crate::routes::caller(&auth.principal),
                auth.principal.access(),
            )
            .await
            .map_err(ApiError::from);
        // A path segment in the type's place may be anything, even a value:
        // only a configured type name reaches the audit log.
        let configured = services.rules().identifiers.is_configured(&kind);
        let detail = Detail {
            identifier_type: Some(if configured { &kind } else { "unconfigured" }),
            ..Detail::default()
        };
        audit::record(
            &auth.principal,
            Action::RemoveIdentifier,
            id,
            detail,
            &result,
        );
        Ok(web::Json(result?))
    })
    .await
}

/// Open merge suggestions: profiles that share a `suggest`-type identifier
/// (by default a phone), or whose identifier a signal claimed, with the
/// evidence. Needs `profiles:read` and `pii:read`: a suggestion names
/// another customer, and would answer whom a claimed value belongs to.
#[utoipa::path(
    get, path = "/v1/profiles/{customer_id}/suggestions", tag = "merges",
    params(("customer_id" = CustomerId, Path, description = "The customer id")),
    responses(
        (status = 200, description = "Open suggestions; accept one with POST .../merge", body = Vec<SuggestionView>),
        (status = 308, description = "Merged into another profile", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn suggestions(
    auth: Authorized<ReadIdentity>,
    services: web::Data<Services>,
    path: web::Path<String>,
) -> Result<web::Json<Vec<SuggestionView>>, ApiError> {
    auth.principal.require(Scope::ProfilesRead)?;
    let id = customer_id(&path)?;
    Ok(web::Json(
        services.suggestions(id, auth.principal.access())?,
    ))
}

/// Dismiss a merge suggestion; it is remembered and not proposed again.
#[utoipa::path(
    delete, path = "/v1/profiles/{customer_id}/suggestions/{other_id}", tag = "merges",
    params(
        ("customer_id" = CustomerId, Path, description = "The customer id"),
        ("other_id" = CustomerId, Path, description = "The other profile of the suggestion"),
    ),
    responses(
        (status = 204, description = "Dismissed"),
        (status = 308, description = "Merged into another profile", body = ErrorBody),
        (status = 404, description = "No such profile or no open suggestion", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn dismiss_suggestion(
    req: HttpRequest,
    auth: Authorized<DismissSuggestions>,
    services: web::Data<Services>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    idempotent(&req, &auth.principal, &services, async {
        let (raw_id, raw_other) = path.into_inner();
        let id = customer_id(&raw_id)?;
        let other = CustomerId::parse(&raw_other)?;
        services
            .dismiss_suggestion(id, other, crate::routes::caller(&auth.principal))
            .await?;
        Ok(HttpResponse::NoContent().finish())
    })
    .await
}
