//! Profiles: read, look up, context cards, timeline, trait and answer writes,
//! manual merge, erasure.

use crate::audit::{self, Action, Detail};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::JsonBody;
use super::inputs::{
    deserialize_limit, AnswersInput, ConsentInput, HistoryParams, MergeInput, TimelineParams,
    TraitsPatch, UnmergeInput,
};
use super::keyed::idempotent;
use super::resource;
use crate::auth::{
    Authorized, DismissSuggestions, EraseProfiles, LookupBudget, MergeProfiles, ReadIdentity,
    ReadProfiles, RemoveIdentifiers, Scope, UnmergeProfiles, WriteProfiles,
};
use crate::domain::names::{ConsentPurpose, IdentifierType};
use crate::domain::CustomerId;
use crate::error::{ApiError, ErrorBody};
use crate::middleware::note_customer;
use crate::service::profiles::{valid_channel_filter, DEFAULT_CONTEXT_INTERACTIONS, MAX_PAGE};
use crate::service::views::{
    ContextCard, HistoryPage, ProfileView, SuggestionView, TimelinePage, UnmergeResult,
};
use crate::service::Services;

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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LookupQuery {
    /// Identifier type, e.g. `phone`.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = IdentifierType)]
    pub kind: String,
    /// Identifier value, written any way the type's normaliser accepts.
    #[param(example = "0612345678", max_length = 256)]
    pub value: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ContextByIdentifierQuery {
    /// Identifier type, e.g. `phone`.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = IdentifierType)]
    pub kind: String,
    /// Identifier value, written any way the type's normaliser accepts.
    #[param(example = "0612345678", max_length = 256)]
    pub value: String,
    /// Recent interactions to include, 0 to 200 (default 10).
    #[serde(default, deserialize_with = "deserialize_limit")]
    #[param(minimum = 0, maximum = 200)]
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ContextQuery {
    /// Recent interactions to include, 0 to 200 (default 10).
    #[serde(default, deserialize_with = "deserialize_limit")]
    #[param(minimum = 0, maximum = 200)]
    pub limit: Option<usize>,
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

fn context_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_CONTEXT_INTERACTIONS),
        Some(n) if n <= MAX_PAGE => Ok(n),
        Some(_) => Err(ApiError::InvalidQuery(format!(
            "limit must be 0 to {MAX_PAGE}"
        ))),
    }
}

/// Read a whole profile.
#[utoipa::path(
    get, path = "/v1/profiles/{customer_id}", tag = "profiles",
    params(("customer_id" = CustomerId, Path, description = "The customer id")),
    responses(
        (status = 200, body = ProfileView),
        (status = 308, description = "Merged into another profile: see Location and canonical-customer-id", body = ErrorBody),
        (status = 400, description = "Malformed customer id", body = ErrorBody),
        (status = 404, description = "No such profile", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_profile(
    auth: Authorized<ReadProfiles>,
    services: web::Data<Services>,
    path: web::Path<String>,
) -> Result<web::Json<ProfileView>, ApiError> {
    let id = customer_id(&path)?;
    Ok(web::Json(
        services.profile(id, auth.principal.access()).await?,
    ))
}

/// Resolve an identifier to its profile (never creates one).
#[utoipa::path(
    get, path = "/v1/profiles/lookup", tag = "profiles",
    params(LookupQuery),
    responses(
        (status = 200, body = ProfileView),
        (status = 404, description = "Nobody owns the identifier", body = ErrorBody),
        (status = 422, description = "Unknown type, or a value the type's normaliser refuses", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn lookup(
    auth: Authorized<ReadProfiles>,
    services: web::Data<Services>,
    budget: web::Data<LookupBudget>,
    query: web::Query<LookupQuery>,
) -> Result<web::Json<ProfileView>, ApiError> {
    let ticket = budget.admit(&auth.principal, services.is_budgeted_lookup(&query.kind))?;
    let found = services
        .lookup(&query.kind, &query.value, auth.principal.access())
        .await
        .map_err(ApiError::from);
    ticket.settle(&found);
    Ok(web::Json(found?))
}

/// The context card of a profile.
#[utoipa::path(
    get, path = "/v1/profiles/{customer_id}/context", tag = "context",
    params(("customer_id" = CustomerId, Path, description = "The customer id"), ContextQuery),
    responses(
        (status = 200, body = ContextCard),
        (status = 308, description = "Merged into another profile", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn context(
    auth: Authorized<ReadProfiles>,
    services: web::Data<Services>,
    path: web::Path<String>,
    query: web::Query<ContextQuery>,
) -> Result<web::Json<ContextCard>, ApiError> {
    let id = customer_id(&path)?;
    let limit = context_limit(query.limit)?;
    Ok(web::Json(
        services.context(id, limit, auth.principal.access()).await?,
    ))
}

/// The context card of whoever owns an identifier: one call for an inbound phone call.
#[utoipa::path(
    get, path = "/v1/context", tag = "context",
    params(ContextByIdentifierQuery),
    responses(
        (status = 200, body = ContextCard),
        (status = 404, description = "Nobody owns the identifier", body = ErrorBody),
        (status = 422, description = "Unknown type, or a value the type's normaliser refuses", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn context_by_identifier(
    auth: Authorized<ReadProfiles>,
    services: web::Data<Services>,
    budget: web::Data<LookupBudget>,
    query: web::Query<ContextByIdentifierQuery>,
) -> Result<web::Json<ContextCard>, ApiError> {
    let limit = context_limit(query.limit)?;
    let ticket = budget.admit(&auth.principal, services.is_budgeted_lookup(&query.kind))?;
    let found = services
        .context_by(&query.kind, &query.value, limit, auth.principal.access())
        .await
        .map_err(ApiError::from);
    ticket.settle(&found);
    Ok(web::Json(found?))
}

/// Interactions across all channels, newest first, cursor-paginated.
#[utoipa::path(
    get, path = "/v1/profiles/{customer_id}/timeline", tag = "profiles",
    params(("customer_id" = CustomerId, Path, description = "The customer id"), TimelineParams),
    responses(
        (status = 200, body = TimelinePage),
        (status = 308, description = "Merged into another profile", body = ErrorBody),
        (status = 400, description = "Bad cursor, limit or channel", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn timeline(
    auth: Authorized<ReadProfiles>,
    services: web::Data<Services>,
    path: web::Path<String>,
    query: web::Query<TimelineParams>,
) -> Result<web::Json<TimelinePage>, ApiError> {
    let id = customer_id(&path)?;
    check_page_limit(query.limit)?;
    if let Some(c) = &query.channel {
        if !valid_channel_filter(c) {
            return Err(ApiError::InvalidQuery(
                "channel must match [a-z][a-z0-9_]{0,31}".into(),
            ));
        }
    }
    Ok(web::Json(services.timeline(
        id,
        &query.into_inner().into(),
        auth.principal.access(),
    )?))
}

/// Set or delete traits (`null` deletes).
#[utoipa::path(
    patch, path = "/v1/profiles/{customer_id}/traits", tag = "profiles",
    params(("customer_id" = CustomerId, Path, description = "The customer id")),
    request_body = TraitsPatch,
    responses(
        (status = 200, description = "The updated profile", body = ProfileView),
        (status = 308, description = "Merged into another profile", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn patch_traits(
    req: HttpRequest,
    auth: Authorized<WriteProfiles>,
    services: web::Data<Services>,
    path: web::Path<String>,
    JsonBody(patch): JsonBody<TraitsPatch>,
) -> Result<HttpResponse, ApiError> {
    idempotent(&req, &auth.principal, &services, async {
        let id = customer_id(&path)?;
        auth.principal.check_channel(&patch.channel)?;
        Ok(web::Json(
            services
                .patch_traits(id, patch.channel, patch.traits, auth.principal.access())
                .await?,
        ))
    })
    .await
}

/// Record answers the customer gave.
#[utoipa::path(
    post, path = "/v1/profiles/{customer_id}/answers", tag = "profiles",
    params(("customer_id" = CustomerId, Path, description = "The customer id")),
    request_body = AnswersInput,
    responses(
        (status = 200, description = "The updated profile", body = ProfileView),
        (status = 308, description = "Merged into another profile", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn add_answers(
    req: HttpRequest,
    auth: Authorized<WriteProfiles>,
    services: web::Data<Services>,
    path: web::Path<String>,
    JsonBody(input): JsonBody<AnswersInput>,
) -> Result<HttpResponse, ApiError> {
    idempotent(&req, &auth.principal, &services, async {
        let id = customer_id(&path)?;
        auth.principal.check_channel(&input.channel)?;
        Ok(web::Json(
            services
                .add_answers(id, input.channel, input.answers, auth.principal.access())
                .await?,
        ))
    })
    .await
}

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
                super::caller(&auth.principal),
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

/// Erase a profile: identifiers, traits, answers, timeline, aliases.
#[utoipa::path(
    delete, path = "/v1/profiles/{customer_id}", tag = "profiles",
    params(("customer_id" = CustomerId, Path, description = "The customer id")),
    responses(
        (status = 204, description = "Erased; its identifiers are free again"),
        (status = 308, description = "Merged into another profile: erase the survivor", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn erase(
    req: HttpRequest,
    auth: Authorized<EraseProfiles>,
    services: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    idempotent(&req, &auth.principal, &services, async {
        let id = customer_id(&path)?;
        let result = services
            .erase(id, super::caller(&auth.principal))
            .await
            .map_err(ApiError::from);
        audit::record(
            &auth.principal,
            Action::Erase,
            id,
            Detail::default(),
            &result,
        );
        result?;
        Ok(HttpResponse::NoContent().finish())
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
                super::caller(&auth.principal),
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
                super::caller(&auth.principal),
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
            .dismiss_suggestion(id, other, super::caller(&auth.principal))
            .await?;
        Ok(HttpResponse::NoContent().finish())
    })
    .await
}

/// Record a consent decision (granted or denied) for a purpose.
#[utoipa::path(
    put, path = "/v1/profiles/{customer_id}/consents/{purpose}", tag = "profiles",
    params(
        ("customer_id" = CustomerId, Path, description = "The customer id"),
        ("purpose" = ConsentPurpose, Path, description = "A configured purpose (`consents.purposes`)"),
    ),
    request_body = ConsentInput,
    responses(
        (status = 200, description = "The updated profile", body = ProfileView),
        (status = 308, description = "Merged into another profile", body = ErrorBody),
        (status = 404, description = "No such profile, or unknown purpose", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn set_consent(
    req: HttpRequest,
    auth: Authorized<WriteProfiles>,
    services: web::Data<Services>,
    path: web::Path<(String, String)>,
    JsonBody(input): JsonBody<ConsentInput>,
) -> Result<HttpResponse, ApiError> {
    idempotent(&req, &auth.principal, &services, async {
        let (raw_id, purpose) = path.into_inner();
        let id = customer_id(&raw_id)?;
        auth.principal.check_channel(&input.channel)?;
        Ok(web::Json(
            services
                .set_consent(
                    id,
                    purpose,
                    input.granted,
                    input.channel,
                    auth.principal.access(),
                )
                .await?,
        ))
    })
    .await
}
