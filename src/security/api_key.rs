//! The API key that guards `POST /api/publish` and the admin endpoints when
//! one is configured. Clients send it as `X-API-Key: <key>` or
//! `Authorization: Bearer <key>` (what Prometheus' `authorization` setting
//! sends). Compared in constant time.

use subtle::ConstantTimeEq;

/// Shortest key accepted.
pub(crate) const MIN_KEY_BYTES: usize = 16;

/// A configured API key.
pub(crate) struct ApiKey(Box<[u8]>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

impl ApiKey {
    /// `None` when `key` is shorter than [`MIN_KEY_BYTES`].
    pub(crate) fn new(key: &str) -> Option<Self> {
        (key.len() >= MIN_KEY_BYTES).then(|| ApiKey(key.as_bytes().into()))
    }

    /// Whether the presented key (if any) is this one.
    pub(crate) fn accepts(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(&self.0)))
    }
}

/// The credential in an `Authorization: Bearer <credential>` header value.
pub(crate) fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, credential) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_is_accepted() {
        let key = ApiKey::new("0123456789abcdef-key").unwrap();
        assert!(key.accepts(Some("0123456789abcdef-key")));
        assert!(!key.accepts(Some("0123456789abcdef-kez")));
        assert!(!key.accepts(Some("0123456789abcdef")));
        assert!(!key.accepts(Some("")));
        assert!(!key.accepts(None));
        assert!(ApiKey::new("short").is_none());
    }

    #[test]
    fn bearer_credentials() {
        assert_eq!(bearer("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer("bearer   abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
