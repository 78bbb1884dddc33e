//! JWT verification with pinned algorithms. The key is chosen by the
//! algorithm family the config pinned, never by what the token claims, so an
//! `alg: none` token or an HS256 token "signed" with the RSA public key fails.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, JwtAlgorithm, JwtConfig};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Tenant,
    Admin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// The tenant the token acts for (required for tenant scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub scope: Scope,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub iat: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token signed with an algorithm that is not accepted")]
    Algorithm,
    #[error("token signature, issuer, audience or claims are invalid")]
    Invalid,
}

impl JwtError {
    pub fn reason(self) -> &'static str {
        match self {
            JwtError::Expired => "token_expired",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::Algorithm => "token_algorithm",
            JwtError::Invalid => "token_invalid",
        }
    }
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

pub struct JwtVerifier {
    secret: Option<DecodingKey>,
    public_key: Option<(Algorithm, DecodingKey)>,
    jwks: Option<JwkSet>,
    algorithms: Vec<Algorithm>,
    issuer: String,
    audience: String,
    leeway: u64,
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig) -> Result<JwtVerifier, ConfigError> {
        let algorithms: Vec<Algorithm> = config.algorithms.iter().copied().map(algorithm).collect();
        let secret = config
            .hs256_secret
            .as_deref()
            .map(DecodingKey::from_secret)
            .transpose()
            .map_err(|e| ConfigError::Key {
                key: "auth.jwt.hs256_secret_env".into(),
                message: e.to_string(),
            })?;
        let public_key = match &config.public_key_pem {
            None => None,
            Some(pem) => {
                let pinned = algorithms.iter().find(|a| **a != Algorithm::HS256).copied();
                let key_error = |e: jsonwebtoken::errors::Error| ConfigError::Key {
                    key: "auth.jwt.public_key_pem".into(),
                    message: format!("not a usable public key: {e}"),
                };
                match pinned {
                    Some(Algorithm::RS256) => Some((
                        Algorithm::RS256,
                        DecodingKey::from_rsa_pem(pem).map_err(key_error)?,
                    )),
                    Some(Algorithm::ES256) => Some((
                        Algorithm::ES256,
                        DecodingKey::from_ec_pem(pem).map_err(key_error)?,
                    )),
                    _ => {
                        return Err(ConfigError::Key {
                            key: "auth.jwt.public_key_pem".into(),
                            message: "a public key needs RS256 or ES256 among the algorithms"
                                .into(),
                        });
                    }
                }
            }
        };
        let jwks = config
            .jwks
            .as_deref()
            .map(serde_json::from_slice::<JwkSet>)
            .transpose()
            .map_err(|e| ConfigError::Key {
                key: "auth.jwt.jwks_file".into(),
                message: format!("not a JWKS document: {e}"),
            })?;
        Ok(JwtVerifier {
            secret,
            public_key,
            jwks,
            algorithms,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_secs,
        })
    }

    fn key_for(&self, header: &Header) -> Option<DecodingKey> {
        match header.alg {
            Algorithm::HS256 => self.secret.clone(),
            alg => {
                if let (Some(jwks), Some(kid)) = (&self.jwks, &header.kid) {
                    return jwks
                        .find(kid)
                        .and_then(|jwk| DecodingKey::from_jwk(jwk).ok());
                }
                match &self.public_key {
                    Some((pinned, key)) if *pinned == alg => Some(key.clone()),
                    _ => None,
                }
            }
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Invalid)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtError::Algorithm);
        }
        let key = self.key_for(&header).ok_or(JwtError::Invalid)?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => JwtError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => JwtError::Algorithm,
                _ => JwtError::Invalid,
            })
    }
}

/// Signs an HS256 token, for `loragate jwt mint` and tests.
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> anyhow::Result<String> {
    let key = EncodingKey::from_secret(secret)?;
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &key,
    )?)
}

/// Whether a bearer credential has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(credential: &str) -> bool {
    let parts: Vec<&str> = credential.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && credential
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}
