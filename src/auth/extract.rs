//! The typed extractors that put a handler's authorization in its
//! signature: [`Authorized`] with the [`Policy`] a route requires, and
//! [`CustomerToken`] for a customer's own view.

use std::future::{ready, Ready};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use futures_util::future::{Either, LocalBoxFuture};

use super::{Authenticator, CustomerClaim, Principal, RateLimiter, Scope};
use crate::audit::{self, Action};
use crate::domain::CustomerId;
use crate::error::ApiError;

/// The scope a route requires, and the audited action it performs, if any:
/// a caller refused for lacking the scope of an audited action leaves an
/// audit line too.
pub trait Policy: 'static {
    const SCOPE: Scope;
    const AUDITED: Option<Action> = None;
}

macro_rules! policy {
    ($($(#[$doc:meta])* $name:ident => $scope:expr $(, $action:expr)?;)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl Policy for $name {
            const SCOPE: Scope = $scope;
            $(const AUDITED: Option<Action> = Some($action);)?
        }
    )*};
}

policy! {
    /// `profiles:read`
    ReadProfiles => Scope::ProfilesRead;
    /// `signals:write`
    WriteSignals => Scope::SignalsWrite;
    /// `profiles:write`
    WriteProfiles => Scope::ProfilesWrite;
    /// `identity:write`, audited
    MergeProfiles => Scope::IdentityWrite, Action::Merge;
    /// `identity:write`, audited
    UnmergeProfiles => Scope::IdentityWrite, Action::Unmerge;
    /// `identity:write`, audited
    RemoveIdentifiers => Scope::IdentityWrite, Action::RemoveIdentifier;
    /// `identity:write`: deciding two profiles are not one person
    DismissSuggestions => Scope::IdentityWrite;
    /// `profiles:erase`, audited
    EraseProfiles => Scope::ProfilesErase, Action::Erase;
    /// `changes:read`
    ReadChanges => Scope::ChangesRead;
    /// `pii:read` (and `profiles:read`, checked by the handler), audited
    ExportProfiles => Scope::PiiRead, Action::Export;
    /// `admin`, audited: a copy of every record
    BackupStore => Scope::Admin, Action::Backup;
    /// `pii:read` (and `profiles:read`, checked by the handler): who is
    /// linked to whom, and how, is personal data
    ReadIdentity => Scope::PiiRead;
}

/// A verified caller holding the scope `P` requires. Extracting it fails with
/// 401 (no or bad token) or 403 (scope missing).
pub struct Authorized<P: Policy> {
    pub principal: Arc<Principal>,
    _policy: PhantomData<P>,
}

/// The verified caller of a request, once it is within its rate limit.
fn authenticate(req: &HttpRequest) -> Result<(Arc<Principal>, bool), ApiError> {
    let auth = req
        .app_data::<web::Data<Authenticator>>()
        .ok_or(ApiError::Internal("authenticator not configured"))?;
    let principal = auth.principal_of(req)?;
    if !auth.settings.disabled {
        if let Some(limiter) = req.app_data::<web::Data<RateLimiter>>() {
            limiter
                .check(&principal.rate_key)
                .map_err(ApiError::RateLimited)?;
        }
    }
    Ok((principal, auth.settings.disabled))
}

impl<P: Policy> Authorized<P> {
    fn authorize(req: &HttpRequest) -> Result<Self, ApiError> {
        let (principal, _) = authenticate(req)?;
        let refusal = match principal.check_binding() {
            Err(e) => Some(e),
            Ok(()) if !principal.has(P::SCOPE) => {
                Some(ApiError::InsufficientScope(P::SCOPE.as_str()))
            }
            Ok(()) => None,
        };
        if let Some(refusal) = refusal {
            let refusal = Err(refusal);
            if let Some(action) = P::AUDITED {
                let id = ["customer_id", "target_id"]
                    .into_iter()
                    .find_map(|name| req.match_info().get(name))
                    .and_then(|raw| CustomerId::parse(raw).ok());
                audit::record_refusal(&principal, action, id, &refusal);
            }
            return refusal;
        }
        Ok(Authorized {
            principal,
            _policy: PhantomData,
        })
    }
}

/// A verified token bound to one customer (its `customer` claim): it reads
/// that customer's own view and nothing else. Any other token is refused
/// with 403 `customer_token_required`.
pub struct CustomerToken {
    pub principal: Arc<Principal>,
    pub customer: CustomerClaim,
}

impl CustomerToken {
    fn authorize(req: &HttpRequest) -> Result<Self, ApiError> {
        let (principal, _) = authenticate(req)?;
        let customer = principal
            .customer
            .clone()
            .ok_or(ApiError::CustomerTokenRequired)?;
        Ok(CustomerToken {
            principal,
            customer,
        })
    }
}

impl FromRequest for CustomerToken {
    type Error = ApiError;
    type Future = Extracted<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        held_refusal(req, Self::authorize(req))
    }
}

/// What the token extractors answer: at once, or after a pause.
type Extracted<T> =
    Either<Ready<Result<T, ApiError>>, LocalBoxFuture<'static, Result<T, ApiError>>>;

/// Answers at once, except a rate-limit refusal, which is held a while
/// before it goes out: see `RateLimiter::reject_delay`.
fn held_refusal<T: 'static>(req: &HttpRequest, outcome: Result<T, ApiError>) -> Extracted<T> {
    match outcome {
        Err(refusal @ ApiError::RateLimited(_)) => {
            let delay = req
                .app_data::<web::Data<RateLimiter>>()
                .map_or(Duration::ZERO, |l| l.reject_delay());
            Either::Right(Box::pin(async move {
                tokio::time::sleep(delay).await;
                Err(refusal)
            }))
        }
        other => Either::Left(ready(other)),
    }
}

impl<P: Policy> FromRequest for Authorized<P> {
    type Error = ApiError;
    type Future = Extracted<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        held_refusal(req, Self::authorize(req))
    }
}
