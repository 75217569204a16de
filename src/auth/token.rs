//! What can be wrong with a bearer token, each with its own stable code, and
//! the token's header and claims as we read them.

use serde::{Deserialize, Serialize};

use crate::error::codes::{self, ErrorCode};

/// Why a token was refused. Every variant answers 401 (see its [`entry`](TokenError::entry)).
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
    #[error("the token's `{claim}` claim has the wrong type (it must be {shape})", claim = .0, shape = claim_shape(.0))]
    BadClaim(&'static str),
    #[error("the token's claims are not a JSON object of the expected claims")]
    BadClaims,
    #[error(
        "the token's header marks extensions as critical (crit), and this service understands none"
    )]
    CriticalHeader,
    #[error("the token is valid for longer than auth.max_token_lifetime ({}) allows; mint tokens with a shorter exp (exp is in seconds)", humantime::format_duration(*.0))]
    LifetimeTooLong(std::time::Duration),
}

/// The claims we read, as an error message describes them.
const CLAIM_SHAPES: &[(&str, &str)] = &[
    ("exp", "a number of seconds since 1970"),
    ("nbf", "a number of seconds since 1970"),
    ("iat", "a number of seconds since 1970"),
    ("aud", "a string or a list of strings"),
    ("iss", "a string"),
    ("sub", "a string"),
    ("scope", "a string of space-separated scopes"),
    ("channel", "a string"),
    ("customer", "an object {\"type\", \"value\"} of two strings"),
];

fn claim_shape(claim: &str) -> &'static str {
    CLAIM_SHAPES
        .iter()
        .find(|(name, _)| *name == claim)
        .map_or("see the documentation", |(_, shape)| shape)
}

/// Which claim of a token's (already verified) payload does not have the
/// type it must: the payload is read again, this time naming the field.
pub fn misfit_claim(token: &str) -> TokenError {
    use base64::Engine;
    let Some(payload) = token.split('.').nth(1) else {
        return TokenError::Malformed;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return TokenError::Malformed;
    };
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    match serde_path_to_error::deserialize::<_, Claims>(&mut de) {
        Ok(_) => TokenError::BadClaims,
        Err(e) => {
            let first = e.path().iter().next().map(|s| s.to_string());
            match first.and_then(|f| CLAIM_SHAPES.iter().find(|(n, _)| *n == f)) {
                Some((name, _)) => TokenError::BadClaim(name),
                None => TokenError::BadClaims,
            }
        }
    }
}

impl TokenError {
    /// Its entry in the error-code table: the stable code clients match on.
    pub fn entry(self) -> &'static ErrorCode {
        match self {
            TokenError::NotBearer | TokenError::Malformed => &codes::INVALID_TOKEN,
            TokenError::InQuery => &codes::TOKEN_IN_QUERY,
            TokenError::AlgorithmNotAllowed => &codes::TOKEN_ALGORITHM_NOT_ALLOWED,
            TokenError::UnknownKey | TokenError::NoKeyId => &codes::UNKNOWN_KEY_ID,
            TokenError::BadSignature => &codes::TOKEN_SIGNATURE_INVALID,
            TokenError::Expired => &codes::TOKEN_EXPIRED,
            TokenError::NotYetValid => &codes::TOKEN_NOT_YET_VALID,
            TokenError::WrongAudience => &codes::TOKEN_AUDIENCE_MISMATCH,
            TokenError::WrongIssuer => &codes::TOKEN_ISSUER_MISMATCH,
            TokenError::MissingClaim(_) => &codes::TOKEN_CLAIM_MISSING,
            TokenError::BadClaim(_) | TokenError::BadClaims => &codes::TOKEN_CLAIMS_INVALID,
            TokenError::CriticalHeader => &codes::TOKEN_CRITICAL_HEADER,
            TokenError::LifetimeTooLong(_) => &codes::TOKEN_LIFETIME_TOO_LONG,
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
            ErrorKind::InvalidClaimFormat(claim) => CLAIM_SHAPES
                .iter()
                .find(|(name, _)| name == claim)
                .map_or(TokenError::BadClaims, |(name, _)| {
                    TokenError::BadClaim(name)
                }),
            ErrorKind::Json(_) | ErrorKind::Utf8(_) => TokenError::BadClaims,
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
    /// Extensions the issuer says must be understood (RFC 7515 4.1.11).
    /// This service understands none, so any `crit` refuses the token.
    #[serde(default)]
    pub crit: Option<serde_json::Value>,
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
        let header: Header = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
        if header.crit.is_some() {
            return Err(TokenError::CriticalHeader);
        }
        Ok(header)
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
        // {"alg":"HS256","crit":["b64"],"b64":false}
        let crit = "eyJhbGciOiJIUzI1NiIsImNyaXQiOlsiYjY0Il0sImI2NCI6ZmFsc2V9.e30.x";
        assert_eq!(Header::parse(crit).unwrap_err(), TokenError::CriticalHeader);
    }

    #[test]
    fn a_misfit_claim_is_named() {
        use base64::Engine;
        let token = |claims: &str| {
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
            format!("e30.{payload}.x")
        };
        assert_eq!(
            misfit_claim(&token(r#"{"exp":1,"sub":42}"#)),
            TokenError::BadClaim("sub")
        );
        assert_eq!(
            misfit_claim(&token(r#"{"scope":["a"]}"#)),
            TokenError::BadClaim("scope")
        );
        assert_eq!(
            misfit_claim(&token(r#"{"channel":{}}"#)),
            TokenError::BadClaim("channel")
        );
        assert_eq!(
            misfit_claim(&token(r#"{"customer":{"type":"email"}}"#)),
            TokenError::BadClaim("customer")
        );
        assert_eq!(misfit_claim(&token("[]")), TokenError::BadClaims);
        let message = TokenError::BadClaim("sub").to_string();
        assert!(
            message.contains("`sub`") && message.contains("a string"),
            "{message}"
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
