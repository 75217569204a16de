//! Reading a profile: whole, by identifier, as a context card, and its
//! timeline.

use actix_web::web;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{check_page_limit, customer_id};
use crate::auth::{Authorized, LookupBudget, ReadProfiles};
use crate::domain::names::IdentifierType;
use crate::domain::CustomerId;
use crate::error::{ApiError, ErrorBody};
use crate::routes::inputs::{deserialize_limit, TimelineParams};
use crate::service::profiles::{valid_channel_filter, DEFAULT_CONTEXT_INTERACTIONS, MAX_PAGE};
use crate::service::views::{ContextCard, ProfileView, TimelinePage};
use crate::service::Services;

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
