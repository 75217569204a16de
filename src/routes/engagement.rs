//! Episodes and follow-ups, personalisation, and the export of a profile.

use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use super::inputs::deserialize_limit;
use super::profiles::{customer_id, LookupQuery};
use super::resource;
use crate::audit::{self, Action, Detail};
use crate::auth::{
    Authorized, Concurrency, CustomerToken, ExportProfiles, LookupBudget, ReadProfiles, Scope,
};
use crate::domain::{CustomerId, EpisodeStatus};
use crate::error::{ApiError, ErrorBody};
use crate::service::engagement::{EpisodesPage, FollowUpPage, OwnEpisodesPage};
use crate::service::profiles::MAX_PAGE;
use crate::service::views::PersonalizationView;
use crate::service::Services;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/profiles/{customer_id}/episodes", "GET").route(web::get().to(episodes)),
    )
    .service(resource("/v1/follow-ups", "GET").route(web::get().to(follow_ups)))
    .service(
        resource("/v1/profiles/{customer_id}/personalization", "GET")
            .route(web::get().to(personalization)),
    )
    .service(
        resource("/v1/personalization", "GET").route(web::get().to(personalization_by_identifier)),
    )
    .service(resource("/v1/profiles/{customer_id}/export", "GET").route(web::get().to(export)))
    .service(resource("/v1/me/episodes", "GET").route(web::get().to(own_episodes)));
}

/// The open episodes of the customer the token is bound to, and where each
/// stands: for a customer-facing page. Needs a token with a `customer`
/// claim naming one of the customer's verified identifiers (`{"type":
/// "account_id", "value": "C-1001"}`), minted by the company's login; any
/// other token is refused, and such a token reads nothing else.
#[utoipa::path(
    get, path = "/v1/me/episodes", tag = "episodes",
    responses(
        (status = 200, body = OwnEpisodesPage),
        (status = 422, description = "The token's customer claim names an unknown or session identifier type, or a value its normaliser refuses", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn own_episodes(
    token: CustomerToken,
    services: web::Data<Services>,
) -> Result<web::Json<OwnEpisodesPage>, ApiError> {
    let customer = &token.customer;
    Ok(web::Json(
        services
            .own_episodes(&customer.kind, &customer.value)
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EpisodesQuery {
    /// Only episodes with these statuses, separated by commas
    /// (`open,waiting_on_us`). All when absent.
    #[param(style = Form, explode = false, value_type = Option<Vec<EpisodeStatus>>)]
    pub status: Option<String>,
}

/// The statuses of a `status` filter; none (all) when absent or empty.
fn parse_statuses(raw: Option<&str>) -> Result<Vec<EpisodeStatus>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(|s| {
            serde_json::from_value::<EpisodeStatus>(serde_json::Value::String(s.trim().to_owned()))
                .map_err(|_| {
                    let shown: String = s.chars().take(32).collect();
                    ApiError::InvalidQuery(format!(
                        "status `{shown}` is not one of open, waiting_on_customer, waiting_on_us, resolved"
                    ))
                })
        })
        .collect()
}

/// A profile's episodes, not resolved ones first.
#[utoipa::path(
    get, path = "/v1/profiles/{customer_id}/episodes", tag = "episodes",
    params(("customer_id" = CustomerId, Path, description = "The customer id"), EpisodesQuery),
    responses(
        (status = 200, body = EpisodesPage),
        (status = 308, description = "Merged into another profile", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn episodes(
    auth: Authorized<ReadProfiles>,
    services: web::Data<Services>,
    path: web::Path<String>,
    query: web::Query<EpisodesQuery>,
) -> Result<web::Json<EpisodesPage>, ApiError> {
    let id = customer_id(&path)?;
    let statuses = parse_statuses(query.status.as_deref())?;
    Ok(web::Json(
        services
            .episodes(id, &statuses, auth.principal.access())
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FollowUpQuery {
    /// Follow-ups due before this instant (RFC 3339); now when absent.
    #[param(value_type = Option<chrono::DateTime<Utc>>, example = "2026-11-30T00:00:00Z")]
    pub due_before: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[serde(default, deserialize_with = "deserialize_limit")]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(
        pattern = "^[0-9]{1,19}-cus_[0-7][0-9A-HJKMNP-TV-Z]{25}-(2[1-9a-f]|[3-6][0-9a-f]|7[0-9a-e]){1,128}$"
    )]
    pub cursor: Option<String>,
}

/// Profiles to call back: resolved episodes awaiting the customer's
/// feedback whose follow-up is due, soonest first.
#[utoipa::path(
    get, path = "/v1/follow-ups", tag = "episodes",
    params(FollowUpQuery),
    responses((status = 200, body = FollowUpPage)),
    security(("bearer" = []))
)]
pub async fn follow_ups(
    auth: Authorized<ReadProfiles>,
    services: web::Data<Services>,
    query: web::Query<FollowUpQuery>,
) -> Result<web::Json<FollowUpPage>, ApiError> {
    let due_before = match &query.due_before {
        None => Utc::now(),
        Some(raw) => DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                let shown: String = raw.chars().take(40).collect();
                ApiError::InvalidQuery(format!(
                    "due_before `{shown}` is not an RFC 3339 time like 2026-11-30T00:00:00Z"
                ))
            })?,
    };
    let limit = match query.limit {
        None => 50,
        Some(n) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::InvalidQuery(format!(
                "limit must be 1 to {MAX_PAGE}"
            )))
        }
    };
    Ok(web::Json(services.follow_ups(
        due_before,
        limit,
        query.cursor.as_deref(),
        auth.principal.access(),
    )?))
}

/// Segments and ranked offers for a profile; none without `personalization` consent.
#[utoipa::path(
    get, path = "/v1/profiles/{customer_id}/personalization", tag = "personalization",
    params(("customer_id" = CustomerId, Path, description = "The customer id")),
    responses(
        (status = 200, body = PersonalizationView),
        (status = 308, description = "Merged into another profile", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn personalization(
    _auth: Authorized<ReadProfiles>,
    services: web::Data<Services>,
    path: web::Path<String>,
) -> Result<web::Json<PersonalizationView>, ApiError> {
    let id = customer_id(&path)?;
    Ok(web::Json(services.personalization(id).await?))
}

/// The same for whoever owns an identifier: an anonymous visitor by cookie.
#[utoipa::path(
    get, path = "/v1/personalization", tag = "personalization",
    params(LookupQuery),
    responses(
        (status = 200, body = PersonalizationView),
        (status = 404, description = "Nobody owns the identifier", body = ErrorBody),
        (status = 422, description = "Unknown type, or a value the type's normaliser refuses", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn personalization_by_identifier(
    auth: Authorized<ReadProfiles>,
    services: web::Data<Services>,
    budget: web::Data<LookupBudget>,
    query: web::Query<LookupQuery>,
) -> Result<web::Json<PersonalizationView>, ApiError> {
    let ticket = budget.admit(&auth.principal, services.is_budgeted_lookup(&query.kind))?;
    let found = services
        .personalization_by(&query.kind, &query.value)
        .await
        .map_err(ApiError::from);
    ticket.settle(&found);
    Ok(web::Json(found?))
}

/// Exports in progress per token subject (`limits.exports_per_subject`).
pub struct Exports(pub Concurrency);

/// Everything held about a customer as one JSON document, streamed: the
/// profile, segments, merge suggestions, the whole timeline and every
/// identity ledger entry of the profile and the ids it absorbed. Needs
/// `profiles:read` and `pii:read`; audited.
#[utoipa::path(
    get, path = "/v1/profiles/{customer_id}/export", tag = "profiles",
    params(("customer_id" = CustomerId, Path, description = "The customer id")),
    responses(
        (status = 200, description = "`{exported_at, customer_id, profile, segments, suggestions, timeline, history}`", content_type = "application/json", body = Object),
        (status = 308, description = "Merged into another profile", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn export(
    auth: Authorized<ExportProfiles>,
    services: web::Data<Services>,
    exports: web::Data<Exports>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = customer_id(&path)?;
    // Held until the document is sent, or the client went away.
    let slot = exports
        .0
        .acquire(auth.principal.budget_key())
        .ok_or(ApiError::TooManyExports(exports.0.max()))?;
    let result = if auth.principal.has(Scope::ProfilesRead) {
        services.into_inner().export(id).map_err(ApiError::from)
    } else {
        Err(ApiError::InsufficientScope(Scope::ProfilesRead.as_str()))
    };
    audit::record(
        &auth.principal,
        Action::Export,
        id,
        Detail::default(),
        &result,
    );
    let export = result?;
    // Each piece reads the store: off the server's threads.
    let body = futures_util::stream::unfold(Some((export, slot)), |state| async move {
        let (mut export, slot) = state?;
        let read = web::block(move || {
            let chunk = export.next_chunk();
            (chunk, export)
        })
        .await;
        let failed = |why: String| {
            // The status line is gone: break the connection off, so the
            // client sees an unfinished document rather than a partial
            // export that looks whole.
            tracing::error!(error = %why, "an export failed part-way");
            Some((
                Err(actix_web::error::ErrorInternalServerError("export failed")),
                None,
            ))
        };
        match read {
            Ok((None, _)) => None,
            Ok((Some(Ok(chunk)), export)) => {
                Some((Ok(web::Bytes::from(chunk)), Some((export, slot))))
            }
            Ok((Some(Err(e)), _)) => failed(e.to_string()),
            Err(e) => failed(e.to_string()),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(format!("{id}.json"))],
        })
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .streaming(body))
}
