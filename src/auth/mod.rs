//! Bearer JWT verification, scopes, and the typed extractor that makes each
//! handler's required scope part of its signature.

mod secret;

use std::future::{ready, Ready};
use std::marker::PhantomData;
use std::time::Duration;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub use secret::{load_or_create_secret, SecretSource};

use crate::config::AuthSettings;
use crate::error::ApiError;
use crate::service::Access;

/// Leeway for `exp` and `nbf`, for clocks that disagree a little.
const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    ProfilesRead,
    PiiRead,
    SignalsWrite,
    ProfilesWrite,
    ProfilesErase,
    /// Implies every other scope.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::ProfilesRead,
        Scope::PiiRead,
        Scope::SignalsWrite,
        Scope::ProfilesWrite,
        Scope::ProfilesErase,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ProfilesRead => "profiles:read",
            Scope::PiiRead => "pii:read",
            Scope::SignalsWrite => "signals:write",
            Scope::ProfilesWrite => "profiles:write",
            Scope::ProfilesErase => "profiles:erase",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    aud: Audience,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
}

/// RFC 7519 allows one audience or a list; `jsonwebtoken` checks that ours is
/// among them, the claims only carry it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Who is calling, as the verified token says.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    scopes: u8,
    /// A token bound to a channel may only write for that channel.
    pub channel: Option<String>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & (scope.bit() | Scope::Admin.bit()) != 0
    }

    /// The field access this caller gets in responses.
    pub fn access(&self) -> Access {
        Access {
            pii: self.has(Scope::PiiRead),
        }
    }

    /// Refuses `verified` identifiers from a token that may not vouch for them.
    pub fn check_verified(&self, input: &crate::domain::SignalInput) -> Result<(), ApiError> {
        if input.identifiers.iter().any(|i| i.verified) && !self.has(Scope::ProfilesWrite) {
            return Err(ApiError::InsufficientScope(Scope::ProfilesWrite.as_str()));
        }
        Ok(())
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

/// Verifies tokens (and mints them for the CLI and the first-start banner).
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    audience: String,
    issuer: Option<String>,
    disabled: bool,
}

impl Authenticator {
    pub fn new(settings: &AuthSettings, secret: &[u8]) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_audience(&[settings.audience.as_str()]);
        let mut required = vec!["exp", "aud"];
        if let Some(iss) = &settings.issuer {
            validation.set_issuer(&[iss.as_str()]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Authenticator {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            audience: settings.audience.clone(),
            issuer: settings.issuer.clone(),
            disabled: settings.disabled,
        }
    }

    /// Verifies a bearer token and returns who it speaks for.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let reason = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidAudience => "the token's audience (aud) does not match",
                    ErrorKind::InvalidIssuer => "the token's issuer (iss) does not match",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    ErrorKind::InvalidSignature => "the token's signature does not verify",
                    ErrorKind::InvalidAlgorithm => "the token is not signed with HS256",
                    _ => "the token is malformed",
                };
                ApiError::InvalidToken(reason)
            })?;
        let claims = data.claims;
        let mut scopes = 0;
        for s in claims.scope.split_whitespace() {
            if let Some(scope) = Scope::parse(s) {
                scopes |= scope.bit();
            }
        }
        Ok(Principal {
            subject: claims.sub,
            scopes,
            channel: claims.channel,
        })
    }

    /// Mints a token for `subject` with `scopes`, valid for `ttl`.
    pub fn mint(
        &self,
        subject: &str,
        scopes: &[Scope],
        channel: Option<&str>,
        ttl: Duration,
    ) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            exp: now + ttl.as_secs(),
            nbf: None,
            iat: Some(now),
            aud: Audience::One(self.audience.clone()),
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            scope: scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            channel: channel.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }

    fn principal_of(&self, req: &HttpRequest) -> Result<Principal, ApiError> {
        if self.disabled {
            return Ok(Principal {
                subject: "anonymous".into(),
                scopes: Scope::Admin.bit(),
                channel: None,
            });
        }
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .ok_or(ApiError::MissingToken)?;
        let text = header
            .to_str()
            .map_err(|_| ApiError::InvalidToken("the Authorization header is not text"))?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or(ApiError::InvalidToken(
                "the Authorization header is not `Bearer <token>`",
            ))?;
        self.verify(token.trim())
    }
}

/// The scope a route requires.
pub trait Policy {
    const SCOPE: Scope;
}

macro_rules! policy {
    ($($(#[$doc:meta])* $name:ident => $scope:expr;)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl Policy for $name {
            const SCOPE: Scope = $scope;
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
    /// `profiles:erase`
    EraseProfiles => Scope::ProfilesErase;
}

/// A verified caller holding the scope `P` requires. Extracting it fails with
/// 401 (no or bad token) or 403 (scope missing).
pub struct Authorized<P: Policy> {
    pub principal: Principal,
    _policy: PhantomData<P>,
}

impl<P: Policy> FromRequest for Authorized<P> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let result = (|| {
            let auth = req
                .app_data::<web::Data<Authenticator>>()
                .ok_or(ApiError::Internal("authenticator not configured"))?;
            let principal = auth.principal_of(req)?;
            if !principal.has(P::SCOPE) {
                return Err(ApiError::InsufficientScope(P::SCOPE.as_str()));
            }
            Ok(Authorized {
                principal,
                _policy: PhantomData,
            })
        })();
        ready(result)
    }
}
