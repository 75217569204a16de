//! HTTP resources, one module each. Handlers are thin: extract, call one
//! service function, shape the response.

pub mod admin;
pub mod changes;
pub mod console;
pub mod engagement;
pub mod extract;
pub mod inputs;
pub mod keyed;
pub mod ops;
pub mod profiles;
pub mod signals;

use actix_web::{web, Resource};

use crate::error::ApiError;

/// A resource that answers unsupported methods with 405 and an `Allow` header
/// (rather than a misleading 404).
pub fn resource(path: &str, allow: &'static str) -> Resource {
    web::resource(path).default_service(web::to(move || async move {
        Err::<actix_web::HttpResponse, ApiError>(ApiError::MethodNotAllowed(allow))
    }))
}

/// Any path no resource matches.
pub async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

/// The caller a token speaks for, as the use cases name it.
pub fn caller(principal: &crate::auth::Principal) -> crate::service::Caller {
    crate::service::Caller {
        subject: principal.subject.clone(),
        channel: principal.channel.clone(),
    }
}
