//! The JWT attack set and the API-key paths.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::jwt::{Claims, JwtError, JwtVerifier, Scope, mint_hs256};
use super::*;
use crate::config::{JwtAlgorithm, JwtConfig};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";
const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/jwt/ec-private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/jwt/ec-public.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Claims {
    Claims {
        sub: "user-1".into(),
        tenant: Some("acme".into()),
        scope: Scope::Tenant,
        iss: "loragate-test".into(),
        aud: "loragate".into(),
        exp: now() + 600,
        nbf: None,
        iat: now(),
    }
}

fn config(algorithms: &[JwtAlgorithm], public_key: Option<&[u8]>) -> JwtConfig {
    JwtConfig {
        algorithms: algorithms.to_vec(),
        hs256_secret: algorithms
            .contains(&JwtAlgorithm::HS256)
            .then(|| SECRET.to_vec()),
        public_key_pem: public_key.map(<[u8]>::to_vec),
        jwks: None,
        issuer: "loragate-test".into(),
        audience: "loragate".into(),
        leeway_secs: 0,
    }
}

fn verifier(algorithms: &[JwtAlgorithm], public_key: Option<&[u8]>) -> JwtVerifier {
    JwtVerifier::new(&config(algorithms, public_key)).expect("valid JWT config")
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn valid_tokens_of_each_pinned_algorithm_pass() {
    let hs = verifier(&[JwtAlgorithm::HS256], None);
    assert_eq!(
        hs.verify(&mint_hs256(SECRET, &claims()).unwrap())
            .unwrap()
            .tenant
            .as_deref(),
        Some("acme")
    );
    let rs = verifier(&[JwtAlgorithm::RS256], Some(RSA_PUBLIC));
    let token = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        &claims(),
    );
    assert!(rs.verify(&token).is_ok());
    let es = verifier(&[JwtAlgorithm::ES256], Some(EC_PUBLIC));
    let token = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
        &claims(),
    );
    assert!(es.verify(&token).is_ok());
}

#[test]
fn alg_none_is_refused() {
    let verifier = verifier(&[JwtAlgorithm::HS256], None);
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(&serde_json::to_vec(&claims()).unwrap());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.c2ln"),
    ] {
        assert!(verifier.verify(&token).is_err(), "{token}");
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic confusion attack: the public key used as an HMAC secret.
    let forged = mint_hs256(RSA_PUBLIC, &claims()).unwrap();
    let rs_only = verifier(&[JwtAlgorithm::RS256], Some(RSA_PUBLIC));
    assert_eq!(rs_only.verify(&forged).unwrap_err(), JwtError::Algorithm);
    // Even with HS256 also pinned, HS256 tokens are checked with the HS256 secret only.
    let both = verifier(
        &[JwtAlgorithm::HS256, JwtAlgorithm::RS256],
        Some(RSA_PUBLIC),
    );
    assert_eq!(both.verify(&forged).unwrap_err(), JwtError::Invalid);
}

#[test]
fn an_unpinned_algorithm_is_refused_even_with_a_good_signature() {
    let hs_only = verifier(&[JwtAlgorithm::HS256], None);
    let token = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        &claims(),
    );
    assert_eq!(hs_only.verify(&token).unwrap_err(), JwtError::Algorithm);
}

#[test]
fn time_issuer_audience_and_signature_are_checked() {
    let verifier = verifier(&[JwtAlgorithm::HS256], None);
    let cases = [
        (
            Claims {
                exp: now() - 10,
                ..claims()
            },
            JwtError::Expired,
        ),
        (
            Claims {
                nbf: Some(now() + 600),
                ..claims()
            },
            JwtError::NotYetValid,
        ),
        (
            Claims {
                iss: "someone-else".into(),
                ..claims()
            },
            JwtError::Invalid,
        ),
        (
            Claims {
                aud: "another-service".into(),
                ..claims()
            },
            JwtError::Invalid,
        ),
    ];
    for (claims, expected) in cases {
        assert_eq!(
            verifier
                .verify(&mint_hs256(SECRET, &claims).unwrap())
                .unwrap_err(),
            expected
        );
    }
    let wrong_secret = mint_hs256(b"another-secret-that-is-32-bytes-long!!", &claims()).unwrap();
    assert_eq!(
        verifier.verify(&wrong_secret).unwrap_err(),
        JwtError::Invalid
    );
    // A payload swapped under a valid signature.
    let token = mint_hs256(SECRET, &claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let admin = Claims {
        scope: Scope::Admin,
        ..claims()
    };
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&admin).unwrap()),
        parts[2]
    );
    assert_eq!(verifier.verify(&tampered).unwrap_err(), JwtError::Invalid);
}

#[test]
fn jwks_keys_are_chosen_by_kid() {
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
        "x": jwk_coordinate(0), "y": jwk_coordinate(1)
    }]});
    let mut config = config(&[JwtAlgorithm::ES256], None);
    config.jwks = Some(serde_json::to_vec(&jwks).unwrap());
    let verifier = JwtVerifier::new(&config).unwrap();
    let key = EncodingKey::from_ec_pem(EC_PRIVATE).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    assert!(
        verifier
            .verify(&jsonwebtoken::encode(&header, &claims(), &key).unwrap())
            .is_ok()
    );
    header.kid = Some("unknown".into());
    assert!(
        verifier
            .verify(&jsonwebtoken::encode(&header, &claims(), &key).unwrap())
            .is_err()
    );
}

/// The P-256 public point from the PEM's last 64 bytes (x then y).
fn jwk_coordinate(index: usize) -> String {
    let pem = std::str::from_utf8(EC_PUBLIC).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let point = &der[der.len() - 64..];
    b64(&point[index * 32..(index + 1) * 32])
}

fn authenticator(toml_extra: &str) -> Authenticator {
    let model = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        "[model]\nserved_name = \"m\"\npath = \"{}\"\n{toml_extra}",
        model.path().display()
    );
    let config = Config::from_toml_str(&text, Vec::new(), std::path::Path::new("/")).unwrap();
    Authenticator::new(&config).unwrap()
}

#[test]
fn api_keys_map_to_their_tenant_or_admin() {
    let (tenant_key, admin_key) = (keys::generate_key(), keys::generate_key());
    let auth = authenticator(&format!(
        "[auth]\nadmin_api_keys = [\"{}\"]\n[[tenants]]\nid = \"acme\"\napi_keys = [\"{}\"]\nmodels = [\"m\"]\n",
        crate::config::KeyHash::of_key(&admin_key).to_config_string(),
        crate::config::KeyHash::of_key(&tenant_key).to_config_string(),
    ));
    match auth.authenticate(Some(&format!("Bearer {tenant_key}"))) {
        Ok(Identity::Tenant(tenant)) => assert_eq!(tenant.id, "acme"),
        other => panic!("expected tenant, got {other:?}"),
    }
    assert!(matches!(
        auth.authenticate(Some(&format!("Bearer {admin_key}"))),
        Ok(Identity::Admin)
    ));
    assert_eq!(auth.authenticate(None).unwrap_err(), AuthFailure::Missing);
    assert_eq!(
        auth.authenticate(Some(&tenant_key)).unwrap_err(),
        AuthFailure::Malformed
    );
    assert_eq!(
        auth.authenticate(Some("Bearer lg-nope")).unwrap_err(),
        AuthFailure::UnknownKey
    );
    // A JWT-shaped credential with no JWT configured is refused, not looked up as a key.
    assert!(matches!(
        auth.authenticate(Some("Bearer a.b.c")),
        Err(AuthFailure::Token(_))
    ));
}

#[test]
fn disabled_auth_makes_everyone_the_anonymous_tenant() {
    let auth = authenticator("[auth]\nenabled = false\n");
    match auth.authenticate(None) {
        Ok(Identity::Tenant(tenant)) => assert_eq!(tenant.id, "anonymous"),
        other => panic!("{other:?}"),
    }
}
