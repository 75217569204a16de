//! What can be wrong with a bearer token, each with its own stable code, and
//! the token's header and claims as we read them.

use serde::{Deserialize, Serialize};

/// Why a token was refused. Every variant answers 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the Authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("the token is not a JWT (three base64url parts: header, claims, signature)")]
    Malformed,
    #[error("tokens are not accepted in the query string, where logs and proxies keep them; send `Authorization: Bearer <token>`")]
    InQuery,
    #[error("the token's algorithm (alg) is not the one its key is pinned to")]
    AlgorithmNotAllowed,
    #[error("the token's key id (kid) names no configured key")]
    UnknownKey,
    #[error("the token names no key id (kid), and no default key is configured")]
    NoKeyId,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience (aud) does not match")]
    WrongAudience,
    #[error("the token's issuer (iss) does not match")]
    WrongIssuer,
    #[error("the token lacks the required `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the token's claims have the wrong types (exp and nbf must be numbers)")]
    BadClaims,
}

impl TokenError {
    /// The stable code clients match on.
    pub fn code(self) -> &'static str {
        match self {
            TokenError::NotBearer | TokenError::Malformed => "invalid_token",
            TokenError::InQuery => "token_in_query",
            TokenError::AlgorithmNotAllowed => "token_algorithm_not_allowed",
            TokenError::UnknownKey | TokenError::NoKeyId => "unknown_key_id",
            TokenError::BadSignature => "token_signature_invalid",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongAudience => "token_audience_mismatch",
            TokenError::WrongIssuer => "token_issuer_mismatch",
            TokenError::MissingClaim(_) => "token_claim_missing",
            TokenError::BadClaims => "token_claims_invalid",
        }
    }

    /// Maps a failure of `jsonwebtoken::decode`. The header was read before
    /// (see `Header::parse`), so a JSON error here is about the claims.
    pub fn from_jwt(e: &jsonwebtoken::errors::Error) -> TokenError {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
            ErrorKind::MissingRequiredClaim(claim) => {
                TokenError::MissingClaim(match claim.as_str() {
                    "exp" => "exp",
                    "aud" => "aud",
                    "iss" => "iss",
                    "nbf" => "nbf",
                    _ => "required",
                })
            }
            ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                TokenError::BadClaims
            }
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm => TokenError::AlgorithmNotAllowed,
            _ => TokenError::Malformed,
        }
    }
}

/// The parts of a JOSE header we act on, read before any key is chosen.
#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    // Read so that a header `jsonwebtoken` would refuse is refused here, as
    // malformed, not later under another name.
    #[serde(default)]
    #[allow(dead_code)]
    typ: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    cty: Option<String>,
}

impl Header {
    pub fn parse(token: &str) -> Result<Header, TokenError> {
        use base64::Engine;
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
    }
}

/// The claims we read. All optional here so that a missing one is reported
/// as missing (by the validation), not as malformed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Binds the token to one customer, named by one of their identifiers
    /// (as the company's login knows them): such a token reads that
    /// customer's own view and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<CustomerClaim>,
}

/// The identifier a customer-bound token names, as the token carries it
/// (normalised when it is used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerClaim {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// RFC 7519 allows one audience or a list; `jsonwebtoken` checks that ours is
/// among them, the claims only carry it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Query parameters that carry tokens in other services; a request that
/// uses one is refused rather than ignored, so the mistake is found early.
const QUERY_TOKEN_NAMES: &[&str] = &["access_token", "token", "id_token", "jwt", "bearer"];

/// Whether the query string carries a token parameter.
pub fn query_has_token(query: &str) -> bool {
    !query.is_empty()
        && query.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            QUERY_TOKEN_NAMES
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_without_trusting_them() {
        // {"alg":"none"}
        let none = "eyJhbGciOiJub25lIn0.e30.";
        assert_eq!(Header::parse(none).unwrap().alg, "none");
        assert_eq!(Header::parse("a.b").unwrap_err(), TokenError::Malformed);
        assert_eq!(Header::parse("a.b.c.d").unwrap_err(), TokenError::Malformed);
        assert_eq!(
            Header::parse("!!.e30.x").unwrap_err(),
            TokenError::Malformed
        );
    }

    #[test]
    fn token_parameters_in_the_query_are_found() {
        assert!(query_has_token("access_token=abc"));
        assert!(query_has_token("type=phone&Token=x"));
        assert!(!query_has_token("type=phone&value=token"));
        assert!(!query_has_token(""));
    }
}
