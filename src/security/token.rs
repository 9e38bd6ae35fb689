//! Connection tokens: verifying a JWT with the keys from the configuration
//! (jsonwebtoken) and turning its claims into a [`Grant`] — who the client is,
//! until when, and which channels it may subscribe and publish to. The key is
//! picked by the token's algorithm family, so a public key is never used as
//! an HMAC secret. Pure: keys are loaded once at start-up, no I/O here.

use jsonwebtoken::{errors::ErrorKind, Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;

use super::pattern::{any_matches, ChannelPattern, PatternError};
use crate::channel::Access;

/// Longest token accepted, in bytes.
pub(crate) const MAX_TOKEN_BYTES: usize = 4096;

/// Shortest HS256 secret accepted: shorter ones can be brute-forced offline
/// from any token.
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The `sub` claim (empty when the token has none).
    pub user: Box<str>,
    /// The `exp` claim, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// The `info` claim (a JSON object, as text), shown in presence lists.
    pub info: Option<Box<str>>,
    subscribe: Box<[ChannelPattern]>,
    publish: Box<[ChannelPattern]>,
}

impl Grant {
    /// Whether the grant covers `access` to `channel`.
    pub fn allows(&self, access: Access, channel: &str) -> bool {
        match access {
            Access::Subscribe => any_matches(&self.subscribe, channel),
            Access::Publish => any_matches(&self.publish, channel),
        }
    }
}

/// Why a token was refused. The message is sent to the client (HTTP 401
/// body or close reason), so it names the problem without echoing the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token algorithm {0:?} is not accepted: no key of that kind is configured")]
    Algorithm(Algorithm),
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("token claims are invalid: {0}")]
    Claims(String),
    #[error("token audience or issuer is not this server's")]
    WrongParty,
    #[error("token {0}")]
    Pattern(#[from] PatternError),
}

/// Why the configured keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("jwt-secret must be at least {MIN_SECRET_BYTES} bytes (it is {0})")]
    ShortSecret(usize),
    #[error("jwt-public-key is neither an RSA nor an EC public key in PEM: {0}")]
    BadPublicKey(String),
}

/// Verifies tokens with the configured keys.
pub struct Verifier {
    secret: Option<DecodingKey>,
    public: Option<(DecodingKey, AlgorithmFamily)>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.secret.is_some())
            .field("public", &self.public.as_ref().map(|(_, family)| family))
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    /// NumericDate: seconds, possibly fractional.
    exp: f64,
    #[serde(default)]
    channels: ChannelClaims,
    /// What presence lists show of the user (an object).
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
}

/// Longest `info` claim accepted, as JSON text.
pub(crate) const MAX_INFO_BYTES: usize = 1024;

#[derive(Deserialize, Default)]
struct ChannelClaims {
    #[serde(default)]
    sub: Vec<String>,
    #[serde(default, rename = "pub")]
    publish: Vec<String>,
}

fn patterns(texts: &[String]) -> Result<Box<[ChannelPattern]>, PatternError> {
    texts.iter().map(|t| ChannelPattern::parse(t)).collect()
}

impl Verifier {
    /// A verifier for HS256 tokens signed with `secret` and/or RS256/ES256
    /// tokens signed by the owner of the PEM `public_key`.
    pub fn new(
        secret: Option<&str>,
        public_key: Option<&[u8]>,
        audience: Option<String>,
        issuer: Option<String>,
    ) -> Result<Self, KeyError> {
        let secret = match secret {
            Some(s) if s.len() < MIN_SECRET_BYTES => return Err(KeyError::ShortSecret(s.len())),
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes())),
            None => None,
        };
        let public = match public_key {
            None => None,
            Some(pem) => Some(match DecodingKey::from_rsa_pem(pem) {
                Ok(key) => (key, AlgorithmFamily::Rsa),
                Err(_) => DecodingKey::from_ec_pem(pem)
                    .map(|key| (key, AlgorithmFamily::Ec))
                    .map_err(|e| KeyError::BadPublicKey(e.to_string()))?,
            }),
        };
        Ok(Verifier {
            secret,
            public,
            audience,
            issuer,
        })
    }

    /// Checks `token` at `now` (Unix seconds) and returns what it grants.
    pub fn verify(&self, token: &str, now: u64) -> Result<Grant, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let key = match header.alg.family() {
            AlgorithmFamily::Hmac => self.secret.as_ref(),
            family => self
                .public
                .as_ref()
                .filter(|(_, kind)| *kind == family)
                .map(|(key, _)| key),
        }
        .ok_or(TokenError::Algorithm(header.alg))?;
        let mut validation = Validation::new(header.alg);
        // Our own check below uses `now`; the library's uses the system clock.
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.validate_nbf = true;
        // A configured audience or issuer must be present, not just match
        // when present (jsonwebtoken checks them only if the token has them).
        let mut required = vec!["exp"];
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| match e.into_kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => TokenError::WrongParty,
                ErrorKind::MissingRequiredClaim(claim) => {
                    TokenError::Claims(format!("missing {claim}"))
                }
                ErrorKind::Json(e) => TokenError::Claims(e.to_string()),
                ErrorKind::InvalidAlgorithm => TokenError::Algorithm(header.alg),
                _ => TokenError::Malformed,
            })?
            .claims;
        if !claims.exp.is_finite() || claims.exp < 0.0 {
            return Err(TokenError::Claims("exp is not a date".into()));
        }
        let expires_at = claims.exp as u64;
        if expires_at <= now {
            return Err(TokenError::Expired);
        }
        let info = match claims.info {
            None => None,
            Some(info) if info.get().len() > MAX_INFO_BYTES => {
                return Err(TokenError::Claims(format!(
                    "info is over {MAX_INFO_BYTES} bytes"
                )));
            }
            Some(info) if !info.get().starts_with('{') => {
                return Err(TokenError::Claims("info must be an object".into()));
            }
            Some(info) => Some(info.get().replace(['\n', '\r'], " ").into()),
        };
        Ok(Grant {
            user: claims.sub.unwrap_or_default().into(),
            expires_at,
            info,
            subscribe: patterns(&claims.channels.sub)?,
            publish: patterns(&claims.channels.publish)?,
        })
    }
}

/// When a grant expiring at `expires_at` (Unix seconds) runs out on a
/// millisecond clock that reads `now_ms` at Unix time `unix_now`.
pub(crate) fn deadline_ms(now_ms: u64, expires_at: u64, unix_now: u64) -> u64 {
    now_ms.saturating_add(expires_at.saturating_sub(unix_now).saturating_mul(1000))
}

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "a-test-secret-that-is-long-enough-0123";
    const NOW: u64 = 1_800_000_000;

    fn hs256(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::new(Some(SECRET), None, None, None).unwrap()
    }

    #[test]
    fn a_valid_token_grants_its_patterns() {
        let token = hs256(
            json!({"sub":"42","exp":NOW + 60,"channels":{"sub":["news","user.42.*"],"pub":["chat.>"]}}),
            SECRET,
        );
        let grant = verifier().verify(&token, NOW).unwrap();
        assert_eq!(&*grant.user, "42");
        assert_eq!(grant.expires_at, NOW + 60);
        assert!(grant.allows(Access::Subscribe, "news"));
        assert!(grant.allows(Access::Subscribe, "user.42.inbox"));
        assert!(!grant.allows(Access::Subscribe, "user.43.inbox"));
        assert!(!grant.allows(Access::Publish, "news"));
        assert!(grant.allows(Access::Publish, "chat.lobby"));
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason() {
        let v = verifier();
        let expired = hs256(json!({"sub":"1","exp":NOW}), SECRET);
        assert_eq!(v.verify(&expired, NOW), Err(TokenError::Expired));
        let forged = hs256(json!({"sub":"1","exp":NOW + 60}), &SECRET.replace('a', "b"));
        assert_eq!(v.verify(&forged, NOW), Err(TokenError::BadSignature));
        assert_eq!(v.verify("not.a.jwt", NOW), Err(TokenError::Malformed));
        assert_eq!(v.verify("", NOW), Err(TokenError::Malformed));
        let no_exp = hs256(json!({"sub":"1"}), SECRET);
        assert!(matches!(v.verify(&no_exp, NOW), Err(TokenError::Claims(_))));
        let bad_pattern = hs256(json!({"exp":NOW + 60,"channels":{"sub":["a*"]}}), SECRET);
        assert!(matches!(
            v.verify(&bad_pattern, NOW),
            Err(TokenError::Pattern(_))
        ));
        let early = hs256(json!({"exp":NOW + 60,"nbf":NOW + 30}), SECRET);
        // nbf is checked against the system clock, which is before NOW.
        assert!(v.verify(&early, NOW).is_err());
        assert_eq!(
            v.verify(&"x".repeat(MAX_TOKEN_BYTES + 1), NOW),
            Err(TokenError::TooLong)
        );
    }

    #[test]
    fn algorithm_must_have_a_configured_key() {
        let token = encode(
            &Header::new(Algorithm::HS384),
            &json!({"exp":NOW + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        // HS384 is in the HMAC family: the secret verifies it.
        assert!(verifier().verify(&token, NOW).is_ok());
        let rsa_only = Verifier::new(None, None, None, None).unwrap();
        assert_eq!(
            rsa_only.verify(&token, NOW),
            Err(TokenError::Algorithm(Algorithm::HS384))
        );
    }

    #[test]
    fn short_secrets_and_bad_keys_are_refused() {
        assert!(matches!(
            Verifier::new(Some("short"), None, None, None),
            Err(KeyError::ShortSecret(5))
        ));
        assert!(matches!(
            Verifier::new(None, Some(b"-----BEGIN NOTHING-----"), None, None),
            Err(KeyError::BadPublicKey(_))
        ));
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let v = Verifier::new(
            Some(SECRET),
            None,
            Some("shardcast".into()),
            Some("auth".into()),
        )
        .unwrap();
        let right = hs256(
            json!({"exp":NOW + 60,"aud":"shardcast","iss":"auth"}),
            SECRET,
        );
        assert!(v.verify(&right, NOW).is_ok());
        let wrong = hs256(json!({"exp":NOW + 60,"aud":"other","iss":"auth"}), SECRET);
        assert_eq!(v.verify(&wrong, NOW), Err(TokenError::WrongParty));
        // Configured claims are required, not only checked when present.
        for partial in [
            json!({"exp":NOW + 60,"iss":"auth"}),
            json!({"exp":NOW + 60,"aud":"shardcast"}),
        ] {
            let token = hs256(partial.clone(), SECRET);
            assert!(
                matches!(v.verify(&token, NOW), Err(TokenError::Claims(_))),
                "{partial}"
            );
        }
    }
}
