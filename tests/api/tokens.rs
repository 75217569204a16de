//! Tokens beyond the default secret: RS256, ES256 and EdDSA keys chosen by
//! `kid` and pinned to their algorithm, the forged, confused and stale tokens
//! each refused with the code naming the fault, JWKS rotation without a
//! restart, a verification cache that never outlives a token, and key files
//! that fail the start rather than the first request.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anamnesis::config::{KeyAlgorithm, KeySettings, Settings};
use anamnesis::startup::Application;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Response;
use serde_json::{json, Value};

use crate::helpers::{
    admin_claims, assert_error, body, id_of, now, signal, spawn_app_with, TestApp, SECRET,
};

fn claims() -> Value {
    admin_claims("tokens")
}

fn claims_with(change: impl FnOnce(&mut Value)) -> Value {
    let mut c = claims();
    change(&mut c);
    c
}

fn without(claim: &str) -> Value {
    claims_with(|c| {
        c.as_object_mut().unwrap().remove(claim);
    })
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

/// Signs `claims` with `key` under `alg`, naming `kid` in the header.
fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("signing with an in-memory key")
}

/// An HS256 token with `secret` as the HMAC key.
fn hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret),
        kid,
        claims,
    )
}

/// An `alg: none` token: header and claims, empty signature.
fn unsigned(kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({ "alg": "none", "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", part(&header), part(claims))
}

/// `token` with its claims swapped for those of `other`: header and
/// signature stay.
fn with_payload_of(token: &str, other: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = other.split('.').nth(1).unwrap();
    parts.join(".")
}

/// A key pair of `tests/fixtures/keys`.
#[derive(Debug, Clone, Copy)]
enum Pair {
    Rsa,
    Rsa2,
    Ec,
    Ed,
}

impl Pair {
    fn stem(self) -> &'static str {
        match self {
            Pair::Rsa => "rsa",
            Pair::Rsa2 => "rsa2",
            Pair::Ec => "ec",
            Pair::Ed => "ed",
        }
    }

    fn alg(self) -> KeyAlgorithm {
        match self {
            Pair::Rsa | Pair::Rsa2 => KeyAlgorithm::RS256,
            Pair::Ec => KeyAlgorithm::ES256,
            Pair::Ed => KeyAlgorithm::EdDSA,
        }
    }

    fn algorithm(self) -> Algorithm {
        match self.alg() {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            KeyAlgorithm::HS256 => unreachable!("no pair is HS256"),
        }
    }

    fn public_key_file(self) -> PathBuf {
        fixture(&format!("{}.pub", self.stem()))
    }

    /// The public key PEM, as an attacker would find it published.
    fn public_pem(self) -> Vec<u8> {
        std::fs::read(self.public_key_file()).expect("fixture public key")
    }

    fn private(self) -> EncodingKey {
        let pem = std::fs::read(fixture(&format!("{}.key", self.stem()))).expect("fixture key");
        match self {
            Pair::Rsa | Pair::Rsa2 => EncodingKey::from_rsa_pem(&pem),
            Pair::Ec => EncodingKey::from_ec_pem(&pem),
            Pair::Ed => EncodingKey::from_ed_pem(&pem),
        }
        .expect("fixture key parses")
    }

    /// Signs `claims` with this pair's private key and its own algorithm.
    fn sign(self, kid: Option<&str>, claims: &Value) -> String {
        sign(self.algorithm(), &self.private(), kid, claims)
    }

    /// The `auth.keys` entry that verifies this pair's tokens as `kid`.
    fn configured(self, kid: &str) -> KeySettings {
        KeySettings {
            kid: kid.into(),
            alg: self.alg(),
            secret: None,
            public_key_file: Some(self.public_key_file()),
            private_key_file: None,
        }
    }

    /// The public JWK of this pair as `kid`, `alg` included.
    fn jwk(self, kid: &str) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.private(), self.algorithm()).expect("JWK");
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    }
}

/// Replaces `path` at once (write, then rename), as a deployment would.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn write_jwks(path: &Path, keys: &[Value]) {
    replace_file(path, &json!({ "keys": keys }).to_string());
}

/// A customer created with `token`; returns the path of its profile.
async fn profile_path(app: &TestApp, token: &str) -> String {
    let resp = app
        .client
        .post(format!("{}/v1/signals", app.address))
        .bearer_auth(token)
        .json(&signal("web", &[("web_cookie", "tokens-cookie")]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    format!("/v1/profiles/{}", id_of(&body(resp).await))
}

async fn assert_accepted(resp: Response, what: &str) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{what}: {text}");
}

/// A 401 with `code` and the `WWW-Authenticate: Bearer` challenge.
async fn assert_refused(resp: Response, code: &str, what: &str) {
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap()),
        Some("Bearer"),
        "{what}"
    );
    // Shown with the failure, which assert_error reports without the name.
    println!("case {what}");
    assert_error(resp, 401, code).await;
}

/// Polls `path` with `token` until it answers 200 (the watcher polls every
/// 100 ms; 5 s is generous on a loaded box).
async fn eventually_accepted(app: &TestApp, token: &str, path: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = app.get_as(token, path).await;
        if resp.status() == 200 {
            return;
        }
        if Instant::now() > deadline {
            let status = resp.status();
            panic!("{what}: still {status} after 5 s: {}", body(resp).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rs256_es256_and_eddsa_keys_verify_tokens_naming_their_kid() {
    const HMAC: &str = "a-configured-hs256-secret-of-32-bytes-or-more";
    let app = spawn_app_with(|s| {
        s.auth.keys = vec![
            Pair::Rsa.configured("desk-rsa"),
            Pair::Ec.configured("bots-ec"),
            Pair::Ed.configured("edge-ed"),
            KeySettings {
                kid: "partner-hmac".into(),
                alg: KeyAlgorithm::HS256,
                secret: Some(HMAC.into()),
                public_key_file: None,
                private_key_file: None,
            },
        ];
    })
    .await;
    // The kid-less default secret keeps working beside the keys.
    let path = profile_path(&app, &app.admin).await;
    let default = hs256(SECRET.as_bytes(), None, &claims());
    assert_accepted(app.get_as(&default, &path).await, "default secret").await;

    for (pair, kid) in [
        (Pair::Rsa, "desk-rsa"),
        (Pair::Ec, "bots-ec"),
        (Pair::Ed, "edge-ed"),
    ] {
        let token = pair.sign(Some(kid), &claims());
        assert_accepted(app.get_as(&token, &path).await, kid).await;
    }
    let partner = hs256(HMAC.as_bytes(), Some("partner-hmac"), &claims());
    assert_accepted(app.get_as(&partner, &path).await, "partner-hmac").await;

    // A kid selects one key: the right algorithm from another key is not enough.
    let other_rsa = Pair::Rsa2.sign(Some("desk-rsa"), &claims());
    let resp = app.get_as(&other_rsa, &path).await;
    assert_refused(resp, "token_signature_invalid", "rsa2 naming desk-rsa").await;
    let default_as_partner = hs256(SECRET.as_bytes(), Some("partner-hmac"), &claims());
    let resp = app.get_as(&default_as_partner, &path).await;
    assert_refused(
        resp,
        "token_signature_invalid",
        "default secret naming partner",
    )
    .await;
    // Without a kid, an asymmetric token meets the HS256 default, not its key.
    let kidless = Pair::Rsa.sign(None, &claims());
    let resp = app.get_as(&kidless, &path).await;
    assert_refused(resp, "token_algorithm_not_allowed", "kid-less RS256").await;
}

#[tokio::test]
async fn forged_confused_and_stale_tokens_are_refused_with_the_fault_named() {
    let app = spawn_app_with(|s| {
        s.auth.keys = vec![Pair::Rsa.configured("rsa"), Pair::Ec.configured("ec")];
    })
    .await;
    let path = profile_path(&app, &app.admin).await;
    // The forger is right when it means to be.
    let good = Pair::Rsa.sign(Some("rsa"), &claims());
    assert_accepted(app.get_as(&good, &path).await, "good RS256").await;
    let good_ec = Pair::Ec.sign(Some("ec"), &claims());
    assert_accepted(app.get_as(&good_ec, &path).await, "good ES256").await;

    let rsa_pem = Pair::Rsa.public_pem();
    let mallory = Pair::Rsa.sign(Some("rsa"), &claims_with(|c| c["sub"] = json!("mallory")));
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "alg none naming a kid",
            "token_algorithm_not_allowed",
            unsigned(Some("rsa"), &claims()),
        ),
        (
            "alg none without a kid",
            "token_algorithm_not_allowed",
            unsigned(None, &claims()),
        ),
        (
            "HS256 keyed with the RSA public key, naming its kid",
            "token_algorithm_not_allowed",
            hs256(&rsa_pem, Some("rsa"), &claims()),
        ),
        (
            "HS256 keyed with the RSA public key, no kid",
            "token_signature_invalid",
            hs256(&rsa_pem, None, &claims()),
        ),
        (
            "RS256 naming the ES256 kid",
            "token_algorithm_not_allowed",
            Pair::Rsa.sign(Some("ec"), &claims()),
        ),
        (
            "ES256 naming the RS256 kid",
            "token_algorithm_not_allowed",
            Pair::Ec.sign(Some("rsa"), &claims()),
        ),
        (
            "PS256 with the right RSA key",
            "token_algorithm_not_allowed",
            sign(
                Algorithm::PS256,
                &Pair::Rsa.private(),
                Some("rsa"),
                &claims(),
            ),
        ),
        (
            "unknown kid",
            "unknown_key_id",
            Pair::Rsa.sign(Some("retired-2019"), &claims()),
        ),
        (
            "another key embedded in the header",
            "token_signature_invalid",
            {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some("rsa".into());
                header.jwk = Some(serde_json::from_value(Pair::Rsa2.jwk("rsa")).unwrap());
                jsonwebtoken::encode(&header, &claims(), &Pair::Rsa2.private()).unwrap()
            },
        ),
        (
            "tampered RS256 payload",
            "token_signature_invalid",
            with_payload_of(&good, &mallory),
        ),
        (
            "expired",
            "token_expired",
            Pair::Ec.sign(Some("ec"), &claims_with(|c| c["exp"] = json!(now() - 600))),
        ),
        (
            "nbf in the future",
            "token_not_yet_valid",
            Pair::Rsa.sign(Some("rsa"), &claims_with(|c| c["nbf"] = json!(now() + 600))),
        ),
        (
            "wrong audience",
            "token_audience_mismatch",
            Pair::Rsa.sign(Some("rsa"), &claims_with(|c| c["aud"] = json!("crm"))),
        ),
        (
            "no audience",
            "token_claim_missing",
            Pair::Rsa.sign(Some("rsa"), &without("aud")),
        ),
        (
            "nbf as a string",
            "token_claims_invalid",
            Pair::Rsa.sign(Some("rsa"), &claims_with(|c| c["nbf"] = json!("0"))),
        ),
        (
            "exp as a string",
            "token_claims_invalid",
            Pair::Rsa.sign(
                Some("rsa"),
                &claims_with(|c| c["exp"] = json!("9999999999")),
            ),
        ),
    ];
    for (name, code, token) in cases {
        assert_refused(app.get_as(&token, &path).await, code, name).await;
    }
    // Refusals are not remembered as anything else: the good token still works.
    assert_accepted(app.get_as(&good, &path).await, "good RS256 again").await;
}

/// The refusal's message, after checking its code.
async fn refusal_message(resp: Response, code: &str, what: &str) -> String {
    assert_eq!(resp.status(), 401, "{what}");
    assert!(resp.headers().contains_key("x-request-id"), "{what}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn long_lived_critical_and_misshapen_tokens_are_refused_naming_the_fault() {
    let app = spawn_app_with(|s| s.auth.max_token_lifetime_secs = 7 * 86_400).await;
    let path = profile_path(&app, &app.admin).await;
    let day = 86_400;
    let sign = |claims: &Value| hs256(SECRET.as_bytes(), None, claims);
    // Within the lifetime, with and without iat.
    let week = claims_with(|c| {
        c["exp"] = json!(now() + 7 * day - 60);
    });
    assert_accepted(app.get_as(&sign(&week), &path).await, "a week, with iat").await;
    let week_no_iat = claims_with(|c| {
        c["exp"] = json!(now() + 7 * day - 60);
        c.as_object_mut().unwrap().remove("iat");
    });
    assert_accepted(
        app.get_as(&sign(&week_no_iat), &path).await,
        "a week, no iat",
    )
    .await;

    // exp in milliseconds: valid for tens of thousands of years.
    let millis = claims_with(|c| c["exp"] = json!(now() * 1000));
    let message = refusal_message(
        app.get_as(&sign(&millis), &path).await,
        "token_lifetime_too_long",
        "exp in milliseconds",
    )
    .await;
    assert!(message.contains("7days"), "{message}");
    // exp - iat over the maximum, though little of it is left.
    let old_long = claims_with(|c| {
        c["iat"] = json!(now() - 30 * day);
        c["exp"] = json!(now() + 600);
    });
    assert_refused(
        app.get_as(&sign(&old_long), &path).await,
        "token_lifetime_too_long",
        "exp - iat over the maximum",
    )
    .await;
    // Without iat, what is left counts.
    let no_iat_long = claims_with(|c| {
        c["exp"] = json!(now() + 8 * day);
        c.as_object_mut().unwrap().remove("iat");
    });
    assert_refused(
        app.get_as(&sign(&no_iat_long), &path).await,
        "token_lifetime_too_long",
        "exp - now over the maximum",
    )
    .await;

    // A critical extension nobody here understands (RFC 7515 4.1.11).
    let header = json!({ "alg": "HS256", "typ": "JWT", "crit": ["exp2"], "exp2": 1 });
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let signing_input = format!("{}.{}", part(&header), part(&claims()));
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    let crit = format!("{signing_input}.{signature}");
    assert_refused(
        app.get_as(&crit, &path).await,
        "token_critical_header",
        "a crit header",
    )
    .await;

    // Wrongly typed claims are named in the message.
    for (claim, value) in [
        ("sub", json!(42)),
        ("scope", json!(["admin"])),
        ("channel", json!(7)),
        ("exp", json!("9999999999")),
    ] {
        let bad = claims_with(|c| c[claim] = value.clone());
        let message = refusal_message(
            app.get_as(&sign(&bad), &path).await,
            "token_claims_invalid",
            claim,
        )
        .await;
        assert!(
            message.contains(&format!("`{claim}`")),
            "{claim}: {message}"
        );
    }
}

#[tokio::test]
async fn a_configured_issuer_is_required_and_checked() {
    const ISSUER: &str = "https://login.example.com";
    let app = spawn_app_with(|s| {
        s.auth.issuer = Some(ISSUER.into());
        s.auth.keys = vec![Pair::Ed.configured("ed")];
    })
    .await;
    let path = profile_path(&app, &app.admin).await;
    let issued = |iss: Option<&str>| {
        let claims = match iss {
            Some(iss) => claims_with(|c| c["iss"] = json!(iss)),
            None => claims(),
        };
        Pair::Ed.sign(Some("ed"), &claims)
    };
    assert_accepted(app.get_as(&issued(Some(ISSUER)), &path).await, "issuer").await;
    let resp = app
        .get_as(&issued(Some("https://evil.example.com")), &path)
        .await;
    assert_refused(resp, "token_issuer_mismatch", "wrong iss").await;
    let resp = app.get_as(&issued(None), &path).await;
    assert_refused(resp, "token_claim_missing", "no iss").await;
}

#[tokio::test]
async fn without_a_default_secret_every_token_must_name_its_key() {
    let app = spawn_app_with(|s| {
        s.auth.hs256_secret = None;
        s.auth.keys = vec![Pair::Rsa.configured("rsa")];
    })
    .await;
    let token = Pair::Rsa.sign(Some("rsa"), &claims());
    let path = profile_path(&app, &token).await;
    assert_accepted(app.get_as(&token, &path).await, "RS256 with kid").await;

    let cases = [
        ("kid-less HS256", hs256(SECRET.as_bytes(), None, &claims())),
        ("kid-less RS256", Pair::Rsa.sign(None, &claims())),
        ("kid-less alg none", unsigned(None, &claims())),
    ];
    for (name, token) in cases {
        assert_refused(app.get_as(&token, &path).await, "unknown_key_id", name).await;
    }
    // No secret was generated behind the operator's back either.
    assert!(!app.settings.storage.path.join("auth.secret").exists());
}

#[tokio::test]
async fn a_token_in_the_query_string_is_refused_even_beside_a_good_header() {
    let app = spawn_app_with(|_| {}).await;
    let path = profile_path(&app, &app.admin).await;
    assert_accepted(app.get_as(&app.admin, &path).await, "header").await;

    let in_query = format!("{}{path}?access_token={}", app.address, app.admin);
    let resp = app.client.get(&in_query).send().await.unwrap();
    assert_refused(resp, "token_in_query", "query only").await;
    let resp = app
        .client
        .get(&in_query)
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_refused(resp, "token_in_query", "query and header").await;
    let lookup = format!(
        "{}/v1/profiles/lookup?type=web_cookie&value=tokens-cookie&access_token={}",
        app.address, app.admin
    );
    let resp = app
        .client
        .get(&lookup)
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_refused(resp, "token_in_query", "among other parameters").await;
}

#[tokio::test]
async fn leeway_admits_a_token_just_past_its_times_only_when_configured() {
    let lenient = spawn_app_with(|_| {}).await;
    assert_eq!(lenient.settings.auth.leeway_secs, 30, "the default leeway");
    let strict = spawn_app_with(|s| s.auth.leeway_secs = 0).await;
    let expired = hs256(
        SECRET.as_bytes(),
        None,
        &claims_with(|c| c["exp"] = json!(now() - 10)),
    );
    let early = hs256(
        SECRET.as_bytes(),
        None,
        &claims_with(|c| c["nbf"] = json!(now() + 10)),
    );

    let path = profile_path(&lenient, &lenient.admin).await;
    assert_accepted(lenient.get_as(&expired, &path).await, "expired 10 s ago").await;
    assert_accepted(lenient.get_as(&early, &path).await, "valid in 10 s").await;

    let path = profile_path(&strict, &strict.admin).await;
    let resp = strict.get_as(&expired, &path).await;
    assert_refused(resp, "token_expired", "expired 10 s ago, no leeway").await;
    let resp = strict.get_as(&early, &path).await;
    assert_refused(resp, "token_not_yet_valid", "valid in 10 s, no leeway").await;
}

#[tokio::test]
async fn a_cached_verification_ends_when_the_token_expires() {
    let app = spawn_app_with(|s| {
        s.auth.leeway_secs = 0;
        s.auth.keys = vec![Pair::Rsa.configured("rsa")];
    })
    .await;
    let path = profile_path(&app, &app.admin).await;
    let exp = now() + 2;
    let token = Pair::Rsa.sign(Some("rsa"), &claims_with(|c| c["exp"] = json!(exp)));
    // Verified, then served from the cache.
    assert_accepted(app.get_as(&token, &path).await, "fresh").await;
    assert_accepted(app.get_as(&token, &path).await, "cached").await;
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = app.get_as(&token, &path).await;
    assert_refused(resp, "token_expired", "cached, then expired").await;
}

#[tokio::test]
async fn a_rewritten_jwks_file_rotates_the_keys_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, &[Pair::Rsa.jwk("a")]);
    let app = spawn_app_with(|s| {
        s.auth.jwks_file = Some(jwks.clone());
        s.auth.jwks_poll_ms = 100;
    })
    .await;
    let path = profile_path(&app, &app.admin).await;
    let a = Pair::Rsa.sign(Some("a"), &claims());
    let b = Pair::Rsa2.sign(Some("b"), &claims());
    // The second answer comes from the verification cache.
    assert_accepted(app.get_as(&a, &path).await, "key a").await;
    assert_accepted(app.get_as(&a, &path).await, "key a, cached").await;
    assert_refused(
        app.get_as(&b, &path).await,
        "unknown_key_id",
        "key b, before",
    )
    .await;

    write_jwks(&jwks, &[Pair::Rsa2.jwk("b")]);
    eventually_accepted(&app, &b, &path, "key b after the rotation").await;
    // Verified and cached before, yet its key is gone.
    let resp = app.get_as(&a, &path).await;
    assert_refused(resp, "unknown_key_id", "key a after the rotation").await;

    // A broken or missing file is not a rotation: the keys in force stay.
    replace_file(&jwks, r#"{"keys": [{"kty": "RSA""#);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_accepted(app.get_as(&b, &path).await, "key b, file broken").await;
    std::fs::remove_file(&jwks).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_accepted(app.get_as(&b, &path).await, "key b, file gone").await;
    let resp = app.get_as(&a, &path).await;
    assert_refused(resp, "unknown_key_id", "key a, file gone").await;

    // And the watcher lives on: a good file is picked up again.
    write_jwks(&jwks, &[Pair::Rsa.jwk("a")]);
    eventually_accepted(&app, &a, &path, "key a back").await;
    let resp = app.get_as(&b, &path).await;
    assert_refused(resp, "unknown_key_id", "key b rotated out").await;
}

#[tokio::test]
async fn jwks_keys_are_pinned_by_type_and_encryption_keys_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let no_alg = |pair: Pair, kid: &str| {
        let mut jwk = pair.jwk(kid);
        assert!(jwk.as_object_mut().unwrap().remove("alg").is_some());
        jwk
    };
    let with = |pair: Pair, kid: &str, field: &str, value: &str| {
        let mut jwk = pair.jwk(kid);
        jwk[field] = json!(value);
        jwk
    };
    write_jwks(
        &jwks,
        &[
            no_alg(Pair::Rsa, "r"),
            no_alg(Pair::Ec, "e"),
            no_alg(Pair::Ed, "d"),
            with(Pair::Rsa2, "signing", "use", "sig"),
            with(Pair::Rsa2, "encryption", "use", "enc"),
            with(Pair::Rsa2, "misfit", "alg", "ES256"),
            // Cannot displace the configured key of that kid.
            Pair::Rsa2.jwk("pinned"),
        ],
    );
    let app = spawn_app_with(|s| {
        s.auth.jwks_file = Some(jwks.clone());
        s.auth.keys = vec![Pair::Rsa.configured("pinned")];
    })
    .await;
    let path = profile_path(&app, &app.admin).await;

    for (pair, kid) in [
        (Pair::Rsa, "r"),
        (Pair::Ec, "e"),
        (Pair::Ed, "d"),
        (Pair::Rsa2, "signing"),
        (Pair::Rsa, "pinned"),
    ] {
        let token = pair.sign(Some(kid), &claims());
        assert_accepted(app.get_as(&token, &path).await, kid).await;
    }

    let cases: Vec<(&str, &str, String)> = vec![
        (
            "HS256 keyed with the RSA public key",
            "token_algorithm_not_allowed",
            hs256(&Pair::Rsa.public_pem(), Some("r"), &claims()),
        ),
        (
            "HS256 keyed with the RSA JWK text",
            "token_algorithm_not_allowed",
            hs256(
                no_alg(Pair::Rsa, "r").to_string().as_bytes(),
                Some("r"),
                &claims(),
            ),
        ),
        (
            "PS256 with the RSA key",
            "token_algorithm_not_allowed",
            sign(Algorithm::PS256, &Pair::Rsa.private(), Some("r"), &claims()),
        ),
        (
            "ES256 naming the EdDSA key",
            "token_algorithm_not_allowed",
            Pair::Ec.sign(Some("d"), &claims()),
        ),
        (
            "an encryption key",
            "unknown_key_id",
            Pair::Rsa2.sign(Some("encryption"), &claims()),
        ),
        (
            "an alg that does not fit the key type",
            "unknown_key_id",
            Pair::Rsa2.sign(Some("misfit"), &claims()),
        ),
        (
            "the JWKS key of a configured kid",
            "token_signature_invalid",
            Pair::Rsa2.sign(Some("pinned"), &claims()),
        ),
    ];
    for (name, code, token) in cases {
        assert_refused(app.get_as(&token, &path).await, code, name).await;
    }
}

/// Settings in `dir` with the auth keys of `keys` and the JWKS file `jwks`.
fn settings_in(dir: &Path, keys: Vec<KeySettings>, jwks: Option<PathBuf>) -> Settings {
    let mut settings = Settings::defaults();
    settings.server.listen = "127.0.0.1:0".into();
    settings.server.workers = 1;
    settings.storage.path = dir.to_path_buf();
    settings.auth.hs256_secret = Some(SECRET.into());
    settings.auth.keys = keys;
    settings.auth.jwks_file = jwks;
    settings.telemetry.level = "warn".into();
    settings
}

#[tokio::test]
async fn unusable_key_files_fail_the_build_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = |name: &str| dir.path().join(name);
    let missing = data("no-such-key.pub");
    let mut gone = Pair::Rsa.configured("gone");
    gone.public_key_file = Some(missing.clone());
    // An RSA public key where an ES256 key was promised.
    let mut mislabelled = Pair::Rsa.configured("mislabelled");
    mislabelled.alg = KeyAlgorithm::ES256;
    let missing_jwks = data("no-such-jwks.json");
    let broken_jwks = data("broken-jwks.json");
    std::fs::write(&broken_jwks, "not json").unwrap();

    let cases = [
        (
            "missing public key file",
            &missing,
            settings_in(&data("a"), vec![gone], None),
        ),
        (
            "key file of another algorithm",
            &Pair::Rsa.public_key_file(),
            settings_in(&data("b"), vec![mislabelled], None),
        ),
        (
            "missing JWKS file",
            &missing_jwks,
            settings_in(&data("c"), vec![], Some(missing_jwks.clone())),
        ),
        (
            "JWKS file that is not JSON",
            &broken_jwks,
            settings_in(&data("d"), vec![], Some(broken_jwks.clone())),
        ),
    ];
    for (name, file, settings) in cases {
        // Configuration alone cannot tell: the files are read at build.
        settings.validate().expect("valid settings");
        let error = match Application::build(settings) {
            Ok(_) => panic!("{name}: the application built"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            error.contains(&file.display().to_string()),
            "{name}: `{error}` does not name {}",
            file.display()
        );
    }
}

/// Runs `anamnesis token` with `config` and `args`; returns the token, or the
/// error output when it fails.
fn cli_token(config: &Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anamnesis"))
        .arg("--config")
        .arg(config)
        .arg("token")
        .args(args)
        .env_remove("ANAMNESIS_CONFIG")
        .output()
        .expect("the binary runs");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn the_cli_mints_with_a_configured_key_chosen_by_kid() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keys.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = {data:?}\n\n[[auth.keys]]\nkid = \"desk-ed\"\nalg = \"EdDSA\"\n\
             public_key_file = {public:?}\nprivate_key_file = {private:?}\n\n\
             [[auth.keys]]\nkid = \"verify-only\"\nalg = \"RS256\"\npublic_key_file = {rsa:?}\n",
            data = dir.path().join("data"),
            public = fixture("ed.pub"),
            private = fixture("ed.key"),
            rsa = fixture("rsa.pub"),
        ),
    )
    .unwrap();
    let app = spawn_app_with(|s| s.auth.keys = vec![Pair::Ed.configured("desk-ed")]).await;
    let path = profile_path(&app, &app.admin).await;

    let token = cli_token(&config, &["--kid", "desk-ed", "--scope", "profiles:read"]).unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], "desk-ed");
    assert_accepted(app.get_as(&token, &path).await, "CLI EdDSA token").await;

    // A key without private material, an unknown kid, and no default key:
    // each refused with a message naming the problem.
    let error = cli_token(&config, &["--kid", "verify-only"]).unwrap_err();
    assert!(
        error.contains("verify-only") && error.contains("private_key_file"),
        "{error}"
    );
    let error = cli_token(&config, &["--kid", "nobody"]).unwrap_err();
    assert!(error.contains("nobody"), "{error}");
    let error = cli_token(&config, &[]).unwrap_err();
    assert!(error.contains("no key to sign with"), "{error}");
}
