//! `--allowed-origins`: which web pages may open WebSocket connections. A
//! browser always sends `Origin` with an upgrade; other clients usually do
//! not, and are not affected. Entries are exact origins
//! (`https://app.example.com`, compared case-insensitively), `*.`-prefixed
//! host wildcards (`https://*.example.com` covers any subdomain, not the apex),
//! or `*` for any. Pure functions.

/// The configured origins; empty allows every origin.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// The entries as configured (`check-config` shows them).
    entries: Vec<String>,
    /// The entries as compared: trimmed, lower case, without a final `/`.
    allowed: Vec<String>,
}

impl OriginPolicy {
    pub fn new(entries: &[String]) -> Self {
        OriginPolicy {
            entries: entries.to_vec(),
            allowed: entries
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    /// The entries as configured.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    pub fn is_restricted(&self) -> bool {
        !self.allowed.is_empty() && !self.allowed.iter().any(|o| o == "*")
    }

    /// Whether an upgrade with this `Origin` header (if any) may proceed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if !self.is_restricted() {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        self.allowed.iter().any(|entry| matches(entry, &origin))
    }
}

fn matches(entry: &str, origin: &str) -> bool {
    let Some((scheme, host)) = entry.split_once("://*.") else {
        return entry == origin;
    };
    let Some(rest) = origin
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
    else {
        return false;
    };
    // A subdomain: at least one label, then ".<host>".
    rest.len() > host.len() + 1
        && rest.ends_with(host)
        && rest.as_bytes()[rest.len() - host.len() - 1] == b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OriginPolicy {
        OriginPolicy::new(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn empty_and_star_allow_all() {
        assert!(policy(&[]).allows(Some("https://evil.example")));
        assert!(policy(&["*"]).allows(Some("https://evil.example")));
    }

    #[test]
    fn exact_origins() {
        let p = policy(&["https://app.example.com/", "http://localhost:3000"]);
        assert!(p.allows(Some("https://APP.example.com")));
        assert!(p.allows(Some("http://localhost:3000")));
        assert!(!p.allows(Some("http://app.example.com")), "scheme differs");
        assert!(!p.allows(Some("http://localhost:3001")), "port differs");
        assert!(!p.allows(Some("null")));
        assert!(p.allows(None), "non-browser clients send no Origin");
    }

    #[test]
    fn subdomain_wildcards() {
        let p = policy(&["https://*.example.com"]);
        assert!(p.allows(Some("https://a.example.com")));
        assert!(p.allows(Some("https://a.b.example.com")));
        assert!(!p.allows(Some("https://example.com")));
        assert!(!p.allows(Some("https://evilexample.com")));
        assert!(!p.allows(Some("http://a.example.com")));
    }
}
