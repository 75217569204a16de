//! Writing to a profile: traits, answers, a consent decision, and erasure.

use actix_web::{web, HttpRequest, HttpResponse};

use super::customer_id;
use crate::audit::{self, Action, Detail};
use crate::auth::{Authorized, EraseProfiles, WriteProfiles};
use crate::domain::names::ConsentPurpose;
use crate::domain::CustomerId;
use crate::error::{ApiError, ErrorBody};
use crate::routes::extract::JsonBody;
use crate::routes::inputs::{AnswersInput, ConsentInput, TraitsPatch};
use crate::routes::keyed::idempotent;
use crate::service::views::ProfileView;
use crate::service::Services;

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
            .erase(id, crate::routes::caller(&auth.principal))
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
