//! The verification keys: an optional default HS256 secret for tokens that
//! name no `kid`, keys from configuration, and keys from a JWKS file. Every
//! key is pinned to one algorithm; a token whose header names another is
//! refused before any signature check.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm as JwkAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use crate::config::{AuthSettings, KeyAlgorithm};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} in {path} is not a usable {alg:?} key: {reason}")]
    BadKey {
        what: String,
        path: PathBuf,
        alg: KeyAlgorithm,
        reason: String,
    },
    #[error("{path} is not a JSON Web Key Set: {reason}")]
    BadJwks { path: PathBuf, reason: String },
    #[error("cannot sign: {0}")]
    Signing(String),
}

impl KeyAlgorithm {
    /// In declaration order, so `alg as usize` indexes it.
    pub const ALL: [KeyAlgorithm; 4] = [
        KeyAlgorithm::HS256,
        KeyAlgorithm::RS256,
        KeyAlgorithm::ES256,
        KeyAlgorithm::EdDSA,
    ];

    pub fn algorithm(self) -> Algorithm {
        match self {
            KeyAlgorithm::HS256 => Algorithm::HS256,
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }

    /// The `alg` header value a token signed with this key carries.
    pub fn header_name(self) -> &'static str {
        match self {
            KeyAlgorithm::HS256 => "HS256",
            KeyAlgorithm::RS256 => "RS256",
            KeyAlgorithm::ES256 => "ES256",
            KeyAlgorithm::EdDSA => "EdDSA",
        }
    }
}

/// One key a token may be verified with.
pub struct VerifyingKey {
    pub alg: KeyAlgorithm,
    pub decoding: DecodingKey,
}

/// The keys in force at one moment. Replaced whole when the JWKS file changes.
#[derive(Default)]
pub struct KeyRing {
    /// Verifies tokens without a `kid`.
    pub default: Option<VerifyingKey>,
    pub by_kid: HashMap<String, Arc<VerifyingKey>>,
}

impl KeyRing {
    /// The default secret, the configured keys and, when configured, the keys
    /// of the JWKS file. Configured keys win over JWKS keys with the same `kid`.
    pub fn load(
        settings: &AuthSettings,
        default_secret: Option<&[u8]>,
        jwks: Option<&[Jwk]>,
    ) -> Result<KeyRing, KeyError> {
        let mut ring = KeyRing {
            default: default_secret.map(|secret| VerifyingKey {
                alg: KeyAlgorithm::HS256,
                decoding: DecodingKey::from_secret(secret),
            }),
            by_kid: HashMap::new(),
        };
        for key in jwks.unwrap_or_default() {
            if let Some((kid, key)) = from_jwk(key) {
                ring.by_kid.insert(kid, Arc::new(key));
            }
        }
        for key in &settings.keys {
            let decoding = match (key.alg, &key.secret, &key.public_key_file) {
                (KeyAlgorithm::HS256, Some(secret), _) => {
                    DecodingKey::from_secret(secret.as_bytes())
                }
                (alg, _, Some(path)) => public_key(alg, path, &key.kid)?,
                // Validation refuses both cases before we get here.
                (alg, _, None) => {
                    return Err(KeyError::BadKey {
                        what: format!("key `{}`", key.kid),
                        path: PathBuf::new(),
                        alg,
                        reason: "no key material".into(),
                    })
                }
            };
            ring.by_kid.insert(
                key.kid.clone(),
                Arc::new(VerifyingKey {
                    alg: key.alg,
                    decoding,
                }),
            );
        }
        Ok(ring)
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.by_kid.is_empty()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

fn public_key(alg: KeyAlgorithm, path: &Path, kid: &str) -> Result<DecodingKey, KeyError> {
    let pem = read(path)?;
    let key = match alg {
        KeyAlgorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
        KeyAlgorithm::ES256 => DecodingKey::from_ec_pem(&pem),
        KeyAlgorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
        KeyAlgorithm::HS256 => Ok(DecodingKey::from_secret(&pem)),
    };
    key.map_err(|e| KeyError::BadKey {
        what: format!("the public key of `{kid}`"),
        path: path.to_owned(),
        alg,
        reason: e.to_string(),
    })
}

/// The private key a configured key signs with (`anamnesis token`).
pub fn private_key(alg: KeyAlgorithm, path: &Path, kid: &str) -> Result<EncodingKey, KeyError> {
    let pem = read(path)?;
    let key = match alg {
        KeyAlgorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        KeyAlgorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        KeyAlgorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        KeyAlgorithm::HS256 => Ok(EncodingKey::from_secret(&pem)),
    };
    key.map_err(|e| KeyError::BadKey {
        what: format!("the private key of `{kid}`"),
        path: path.to_owned(),
        alg,
        reason: e.to_string(),
    })
}

/// Parses a JWKS document. Keys without a `kid`, meant for encryption, or of
/// an algorithm we do not verify are left out with a warning rather than
/// failing the whole set: identity providers publish such keys side by side
/// with the signing keys.
pub fn parse_jwks(path: &Path, text: &[u8]) -> Result<Vec<Jwk>, KeyError> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(text).map_err(|e| KeyError::BadJwks {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for (i, raw) in set.keys.into_iter().enumerate() {
        match serde_json::from_value::<Jwk>(raw) {
            Ok(jwk) if from_jwk(&jwk).is_some() => keys.push(jwk),
            Ok(_) => tracing::warn!(
                file = %path.display(),
                index = i,
                "JWKS key left out: it has no kid, is not for signatures, or its algorithm is not HS256, RS256, ES256 or EdDSA"
            ),
            Err(e) => tracing::warn!(
                file = %path.display(),
                index = i,
                error = %e,
                "JWKS key left out: not a JSON Web Key"
            ),
        }
    }
    Ok(keys)
}

/// A JWK as a pinned key, or `None` when we cannot use it. The algorithm is
/// the key's `alg` when given, else the one its type and curve imply.
fn from_jwk(jwk: &Jwk) -> Option<(String, VerifyingKey)> {
    use jsonwebtoken::jwk::PublicKeyUse;
    let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty())?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyAlgorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            KeyAlgorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyAlgorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => KeyAlgorithm::HS256,
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => implied,
        Some(JwkAlgorithm::HS256) => KeyAlgorithm::HS256,
        Some(JwkAlgorithm::RS256) => KeyAlgorithm::RS256,
        Some(JwkAlgorithm::ES256) => KeyAlgorithm::ES256,
        Some(JwkAlgorithm::EdDSA) => KeyAlgorithm::EdDSA,
        Some(_) => return None,
    };
    if alg != implied {
        // An `alg` that does not fit the key's type.
        return None;
    }
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, VerifyingKey { alg, decoding }))
}
