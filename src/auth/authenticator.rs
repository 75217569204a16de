//! The [`Authenticator`]: verifies bearer tokens against the key ring in
//! force (configured keys, a JWKS file it watches), caches what it
//! verified, and mints tokens for the CLI and the first-start banner.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use actix_web::HttpRequest;
use jsonwebtoken::{EncodingKey, Validation};

use super::cache::TokenCache;
use super::keys::{self, KeyError, KeyRing};
use super::token::{self, Audience, Claims, CustomerClaim, Header, TokenError};
use super::{Principal, Scope};
use crate::config::{AuthSettings, KeyAlgorithm};
use crate::error::ApiError;

/// The key ring in force, numbered so that cached verifications made with an
/// older ring are not trusted after a rotation.
struct Ring {
    keys: KeyRing,
    generation: u64,
}

/// Where the JWKS keys come from, and what was last read there.
struct JwksSource {
    path: PathBuf,
    last: Mutex<JwksState>,
}

#[derive(Default)]
struct JwksState {
    bytes: Vec<u8>,
    /// The last failure reported, so a bad file is logged once, not per poll.
    error: Option<String>,
}

/// A key tokens are minted with (the CLI and the first-start banner).
struct Signer {
    kid: Option<String>,
    alg: KeyAlgorithm,
    key: EncodingKey,
}

/// Verifies tokens: picks the key by `kid`, checks the algorithm it is pinned
/// to, the signature and the claims, and remembers the outcome until the
/// token expires. Mints tokens too, for the CLI and the first-start banner.
pub struct Authenticator {
    ring: RwLock<Arc<Ring>>,
    pub(super) settings: AuthSettings,
    default_secret: Option<Vec<u8>>,
    jwks: Option<JwksSource>,
    cache: TokenCache,
    signer: Option<Signer>,
    /// The claim checks for each algorithm, indexed by `KeyAlgorithm`.
    validations: [Validation; 4],
    /// Channel -> the sensitive scopes its tokens may carry, as scope bits.
    channel_scopes: std::collections::HashMap<String, u8>,
}

/// The scope bits of `auth.channel_scopes`, per channel (validated with the
/// settings; an unknown name is left out).
fn channel_scope_bits(settings: &AuthSettings) -> std::collections::HashMap<String, u8> {
    settings
        .channel_scopes
        .iter()
        .map(|(channel, names)| {
            let bits = names
                .iter()
                .filter_map(|n| Scope::parse(n))
                .fold(0, |bits, s| bits | s.bit());
            (channel.clone(), bits)
        })
        .collect()
}

/// What a token signed with `alg` must satisfy besides its signature.
fn validation(settings: &AuthSettings, alg: KeyAlgorithm) -> Validation {
    let mut validation = Validation::new(alg.algorithm());
    validation.leeway = settings.leeway_secs;
    validation.validate_nbf = true;
    validation.set_audience(&[settings.audience.as_str()]);
    let mut required = vec!["exp", "aud"];
    if let Some(iss) = &settings.issuer {
        validation.set_issuer(&[iss.as_str()]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation
}

impl Authenticator {
    /// `default_secret` verifies (and signs) tokens that carry no `kid`.
    /// Fails when a configured key or the JWKS file cannot be read.
    pub fn new(
        settings: &AuthSettings,
        default_secret: Option<&[u8]>,
    ) -> Result<Authenticator, KeyError> {
        let jwks = settings.jwks_file.as_ref().map(|path| JwksSource {
            path: path.clone(),
            last: Mutex::new(JwksState::default()),
        });
        let jwks_keys = match &jwks {
            Some(source) => {
                let bytes = std::fs::read(&source.path).map_err(|e| KeyError::Read {
                    path: source.path.clone(),
                    source: e,
                })?;
                let keys = keys::parse_jwks(&source.path, &bytes)?;
                source.last.lock().unwrap_or_else(|p| p.into_inner()).bytes = bytes;
                Some(keys)
            }
            None => None,
        };
        let ring = KeyRing::load(settings, default_secret, jwks_keys.as_deref())?;
        let signer = default_secret.map(|secret| Signer {
            kid: None,
            alg: KeyAlgorithm::HS256,
            key: EncodingKey::from_secret(secret),
        });
        Ok(Authenticator {
            ring: RwLock::new(Arc::new(Ring {
                keys: ring,
                generation: 0,
            })),
            settings: settings.clone(),
            default_secret: default_secret.map(<[u8]>::to_vec),
            jwks,
            cache: TokenCache::new(settings.token_cache_entries),
            signer,
            validations: KeyAlgorithm::ALL.map(|alg| validation(settings, alg)),
            channel_scopes: channel_scope_bits(settings),
        })
    }

    /// The first sensitive scope of `scopes` that a token bound to `channel`
    /// may not carry (`auth.channel_scopes`); none for unbound tokens.
    pub fn refused_scope(&self, scopes: &[Scope], channel: Option<&str>) -> Option<Scope> {
        let bits = scopes.iter().fold(0, |b, s| b | s.bit());
        self.refused_bits(bits, channel)
    }

    fn refused_bits(&self, bits: u8, channel: Option<&str>) -> Option<Scope> {
        let channel = channel?;
        let allowed = self.channel_scopes.get(channel).copied().unwrap_or(0);
        Scope::SENSITIVE
            .into_iter()
            .find(|s| bits & s.bit() != 0 && allowed & s.bit() == 0)
    }

    /// The sensitive scopes each channel's tokens may carry, one channel a
    /// line, for `anamnesis check-config`.
    pub fn describe_channel_scopes(&self, channels: &[String]) -> String {
        let mut out = String::new();
        for channel in channels {
            let allowed = self.channel_scopes.get(channel).copied().unwrap_or(0);
            let names: Vec<&str> = Scope::SENSITIVE
                .into_iter()
                .filter(|s| allowed & s.bit() != 0)
                .map(Scope::as_str)
                .collect();
            let shown = if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(" ")
            };
            out.push_str(&format!("{channel:<12} {shown}\n"));
        }
        out
    }

    /// Signs minted tokens with the configured key `kid` (its secret, or its
    /// `private_key_file`) instead of the default secret.
    pub fn sign_with(mut self, kid: &str) -> Result<Authenticator, KeyError> {
        let key = self
            .settings
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| KeyError::Signing(format!("no configured key has kid `{kid}`")))?;
        let encoding = match (&key.secret, &key.private_key_file) {
            (Some(secret), _) => EncodingKey::from_secret(secret.as_bytes()),
            (None, Some(path)) => keys::private_key(key.alg, path, kid)?,
            (None, None) => {
                return Err(KeyError::Signing(format!(
                    "key `{kid}` has no secret or private_key_file to sign with"
                )))
            }
        };
        self.signer = Some(Signer {
            kid: Some(kid.to_owned()),
            alg: key.alg,
            key: encoding,
        });
        Ok(self)
    }

    /// Whether any key verifies tokens.
    pub fn has_keys(&self) -> bool {
        !self.current().keys.is_empty()
    }

    fn current(&self) -> Arc<Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the JWKS file and, when it changed and parses, puts its keys
    /// in force. A file that is missing or invalid leaves the keys as they
    /// were (and is logged once). Returns whether the keys changed.
    fn reload_jwks(&self) -> bool {
        let Some(source) = &self.jwks else {
            return false;
        };
        let mut last = source.last.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = std::fs::read(&source.path)
            .map_err(|e| KeyError::Read {
                path: source.path.clone(),
                source: e,
            })
            .and_then(|bytes| {
                if bytes == last.bytes {
                    return Ok(None);
                }
                let jwks = keys::parse_jwks(&source.path, &bytes)?;
                let ring =
                    KeyRing::load(&self.settings, self.default_secret.as_deref(), Some(&jwks))?;
                Ok(Some((bytes, ring, jwks.len())))
            });
        match loaded {
            Ok(None) => false,
            Ok(Some((bytes, ring, count))) => {
                last.bytes = bytes;
                last.error = None;
                let mut current = self.ring.write().unwrap_or_else(|p| p.into_inner());
                let generation = current.generation + 1;
                *current = Arc::new(Ring {
                    keys: ring,
                    generation,
                });
                tracing::info!(file = %source.path.display(), keys = count, "JWKS reloaded");
                true
            }
            Err(e) => {
                let text = format!("{e:#}");
                if last.error.as_deref() != Some(&text) {
                    tracing::error!(error = %text, "JWKS not reloaded; the previous keys stay in force");
                    last.error = Some(text);
                }
                false
            }
        }
    }

    /// Checks the JWKS file every `auth.jwks_poll_ms` for as long as the
    /// authenticator lives.
    pub fn watch_jwks(self: &Arc<Self>) {
        if self.jwks.is_none() {
            return;
        }
        let weak: Weak<Authenticator> = Arc::downgrade(self);
        let every = Duration::from_millis(self.settings.jwks_poll_ms);
        std::thread::Builder::new()
            .name("jwks-watch".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                match weak.upgrade() {
                    Some(auth) => {
                        auth.reload_jwks();
                    }
                    None => return,
                }
            })
            .expect("the JWKS watcher thread starts");
    }

    fn validation(&self, alg: KeyAlgorithm) -> &Validation {
        &self.validations[alg as usize]
    }

    /// Verifies a bearer token and returns who it speaks for.
    pub fn verify(&self, token: &str) -> Result<Arc<Principal>, TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        let ring = self.current();
        if let Some(principal) = self.cache.get(token, ring.generation, now) {
            return Ok(principal);
        }
        let header = Header::parse(token)?;
        let key = match &header.kid {
            Some(kid) => ring
                .keys
                .by_kid
                .get(kid)
                .map(|k| &**k)
                .ok_or(TokenError::UnknownKey)?,
            None => ring.keys.default.as_ref().ok_or(TokenError::NoKeyId)?,
        };
        if header.alg != key.alg.header_name() {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, self.validation(key.alg))
            .map_err(|e| match e.kind() {
                // The signature verified; the claims did not decode.
                jsonwebtoken::errors::ErrorKind::Json(_) => token::misfit_claim(token),
                _ => TokenError::from_jwt(&e),
            })?
            .claims;
        // `exp` is required, so present after validation.
        let exp = claims.exp.unwrap_or(0);
        let lifetime = exp.saturating_sub(claims.iat.unwrap_or(now));
        if lifetime > self.settings.max_token_lifetime_secs {
            return Err(TokenError::LifetimeTooLong(Duration::from_secs(
                self.settings.max_token_lifetime_secs,
            )));
        }
        let mut scopes = 0;
        for s in claims.scope.split_whitespace() {
            if let Some(scope) = Scope::parse(s) {
                scopes |= scope.bit();
            }
        }
        // A customer's token is theirs alone: whatever scopes it names,
        // it reads their own view and nothing else.
        if claims.customer.is_some() {
            scopes = 0;
        }
        let refused_scope = self.refused_bits(scopes, claims.channel.as_deref());
        // A login portal may mint every customer's token with its own
        // subject: each customer still gets a budget of their own.
        let rate_key: Arc<str> = match (&claims.customer, claims.sub.is_empty()) {
            (Some(c), _) => format!("customer:{}:{}", c.kind, c.value).into(),
            (None, true) => token.into(),
            (None, false) => format!("sub:{}", claims.sub).into(),
        };
        let valid_until = exp.saturating_add(self.settings.leeway_secs);
        let principal = Arc::new(Principal {
            subject: claims.sub,
            scopes,
            channel: claims.channel,
            rate_key,
            valid_until,
            refused_scope,
            customer: claims.customer,
        });
        self.cache
            .insert(token, principal.clone(), valid_until, ring.generation, now);
        Ok(principal)
    }

    /// Mints a token for `subject` with `scopes`, valid for `ttl`, signed with
    /// the default secret or the key chosen by [`Authenticator::sign_with`].
    pub fn mint(
        &self,
        subject: &str,
        scopes: &[Scope],
        channel: Option<&str>,
        ttl: Duration,
    ) -> Result<String, KeyError> {
        let mut claims = self.claims(subject, ttl);
        claims.scope = scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        claims.channel = channel.map(str::to_owned);
        self.sign(&claims)
    }

    /// The claims every minted token carries: valid from now for `ttl`,
    /// for this service's audience and issuer.
    fn claims(&self, subject: &str, ttl: Duration) -> Claims {
        let now = jsonwebtoken::get_current_timestamp();
        Claims {
            exp: Some(now + ttl.as_secs()),
            nbf: None,
            iat: Some(now),
            aud: Some(Audience::One(self.settings.audience.clone())),
            iss: self.settings.issuer.clone(),
            sub: subject.to_owned(),
            scope: String::new(),
            channel: None,
            customer: None,
        }
    }

    /// Mints a token bound to the customer who holds the identifier
    /// `kind:value`, valid for `ttl`: what a company's login hands a
    /// customer-facing page.
    pub fn mint_for_customer(
        &self,
        subject: &str,
        kind: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<String, KeyError> {
        let mut claims = self.claims(subject, ttl);
        claims.customer = Some(CustomerClaim {
            kind: kind.to_owned(),
            value: value.to_owned(),
        });
        self.sign(&claims)
    }

    fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let signer = self.signer.as_ref().ok_or_else(|| {
            KeyError::Signing("no key to sign with: configure auth.hs256_secret, or pick a configured key with a secret or private_key_file (--kid)".into())
        })?;
        let mut header = jsonwebtoken::Header::new(signer.alg.algorithm());
        header.kid = signer.kid.clone();
        jsonwebtoken::encode(&header, claims, &signer.key)
            .map_err(|e| KeyError::Signing(e.to_string()))
    }

    pub(super) fn principal_of(&self, req: &HttpRequest) -> Result<Arc<Principal>, ApiError> {
        if self.settings.disabled {
            return Ok(Arc::new(Principal {
                subject: "anonymous".into(),
                scopes: Scope::Admin.bit(),
                channel: None,
                rate_key: "anonymous".into(),
                valid_until: u64::MAX,
                refused_scope: None,
                customer: None,
            }));
        }
        if token::query_has_token(req.query_string()) {
            return Err(TokenError::InQuery.into());
        }
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .ok_or(ApiError::MissingToken)?;
        let text = header.to_str().map_err(|_| TokenError::NotBearer)?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or(TokenError::NotBearer)?;
        Ok(self.verify(token.trim())?)
    }
}
