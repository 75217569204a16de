//! Who is calling: the verified token's subject, scopes, channel and
//! customer bindings, and the checks a handler asks of them.

use std::sync::Arc;

use super::{CustomerClaim, Scope};
use crate::domain::Access;
use crate::error::ApiError;

/// Who is calling, as the verified token says.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub(super) scopes: u8,
    /// A token bound to a channel may only write for that channel.
    pub channel: Option<String>,
    /// Whose budget a request spends: the subject, or the token itself when
    /// it names none.
    pub(super) rate_key: Arc<str>,
    /// Unix seconds after which the token is refused (its `exp` plus the
    /// leeway): a long response, like an event stream, ends then.
    pub valid_until: u64,
    /// A sensitive scope the token carries although its channel may not:
    /// every request with it is refused.
    pub(super) refused_scope: Option<Scope>,
    /// The customer a customer-bound token speaks for; such a token holds
    /// no scopes.
    pub customer: Option<CustomerClaim>,
}

impl Principal {
    /// Whose budgets a request spends (rate, lookups, streams, exports):
    /// the subject, or the token itself when it names none.
    pub fn budget_key(&self) -> &Arc<str> {
        &self.rate_key
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & (scope.bit() | Scope::Admin.bit()) != 0
    }

    /// Refuses a caller without `scope` (a second scope a route needs
    /// besides its policy's).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        match self.has(scope) {
            true => Ok(()),
            false => Err(ApiError::InsufficientScope(scope.as_str())),
        }
    }

    /// The field access this caller gets in responses.
    pub fn access(&self) -> Access {
        Access {
            pii: self.has(Scope::PiiRead),
        }
    }

    /// Refuses `verified` identifiers from a token that may not vouch for
    /// them: vouching decides who is who, an identity operation.
    pub fn check_verified(&self, input: &crate::domain::SignalInput) -> Result<(), ApiError> {
        if input.identifiers.iter().any(|i| i.verified) && !self.has(Scope::IdentityWrite) {
            return Err(ApiError::InsufficientScope(Scope::IdentityWrite.as_str()));
        }
        Ok(())
    }

    /// Refuses a token that carries a scope its channel is not allowed, or
    /// that is bound to a customer: checked before any route's own scope.
    pub(super) fn check_binding(&self) -> Result<(), ApiError> {
        if self.customer.is_some() {
            return Err(ApiError::CustomerTokenNotAllowed);
        }
        match (self.refused_scope, &self.channel) {
            (Some(scope), Some(channel)) => Err(ApiError::ScopeNotAllowedForChannel {
                channel: channel.clone(),
                scope: scope.as_str(),
            }),
            _ => Ok(()),
        }
    }

    /// Refuses a write for `channel` by a token bound to another channel.
    pub fn check_channel(&self, channel: &str) -> Result<(), ApiError> {
        match &self.channel {
            Some(bound) if bound != channel => Err(ApiError::ChannelNotAllowed {
                bound: bound.clone(),
                requested: channel.chars().take(32).collect(),
            }),
            _ => Ok(()),
        }
    }
}
