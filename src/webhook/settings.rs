//! The webhook section of the settings: where lifecycle events go (the URL
//! parsed here, once), how they are signed and batched, and how long
//! `channel_vacated` waits. Declared here (`settings::section!`) so that
//! the webhook layer does not import `config`.

use std::{path::PathBuf, time::Duration};

use super::WebhookUrl;
use crate::{
    settings::{ensure, section, SettingValue, Shown},
    units::HumanDuration,
};

section! {
    /// Lifecycle webhooks (`--webhook-url`).
    pub struct WebhookConfig {
        /// Where lifecycle webhooks are POSTed (`http://` or `https://`
        /// `host[:port]/path`); `None`: no webhooks.
        url: Option<WebhookUrl> as String = None => new("webhook-url", "URL")
            .default_text("off")
            .help("POST lifecycle events (channel_occupied/vacated, connected/disconnected, subscribed/unsubscribed) here, http(s)://host[:port]/path")
            .readme("POST lifecycle events (occupied/vacated, connected/disconnected, subscribed/unsubscribed) to an `http://` or `https://` URL, batched and signed ([docs/api.md](docs/api.md))");
        /// Key of their `X-Shardcast-Signature` (HMAC-SHA256 of the body).
        secret: Option<String> as String = None => new("webhook-secret", "SECRET")
            .secret()
            .default_text("unsigned")
            .help("Secret signing each webhook body (X-Shardcast-Signature: sha256=<hex HMAC-SHA256>); prefer the environment variable")
            .readme("key of each request's `X-Shardcast-Signature` (HMAC-SHA256 of the body)");
        /// PEM certificates an `https` webhook receiver is checked against,
        /// instead of the bundled web roots (Mozilla's).
        ca: Option<PathBuf> as PathBuf = None => new("webhook-ca", "FILE")
            .default_text("the web's roots")
            .help("PEM CA certificate(s) an https webhook receiver must chain to, instead of the bundled web roots")
            .readme("PEM certificates an `https` webhook receiver must chain to");
        /// Most events per request.
        batch: usize as usize = 100 => new("webhook-batch", "N")
            .help("Most events per webhook request")
            .readme("events per request")
            .check(|batch| ensure(
                (1..=10_000).contains(batch),
                || format!("webhook-batch is {batch}, must be 1..=10000"),
            ));
        /// `channel_vacated` waits this long, and is dropped if the channel
        /// fills again meanwhile.
        vacated_grace: Duration as HumanDuration = Duration::from_secs(5) => new("vacated-grace", "DURATION")
            .help("channel_vacated waits this long and is dropped if the channel fills again")
            .readme("`channel_vacated` waits this long, dropped if the channel fills again");
    }
}

impl WebhookConfig {
    /// A secret and a CA need a URL (an `https` one for the CA).
    pub fn check(&self) -> Result<(), String> {
        ensure(self.secret.is_none() || self.url.is_some(), || {
            "webhook-secret needs webhook-url".into()
        })?;
        let https = self.url.as_ref().is_some_and(|url| url.tls);
        ensure(self.ca.is_none() || https, || {
            "webhook-ca needs an https:// webhook-url".into()
        })
    }
}

impl SettingValue<String> for WebhookUrl {
    fn from_setting(raw: String, _: &'static str) -> Result<Self, String> {
        WebhookUrl::parse(&raw).map_err(|error| error.to_string())
    }

    fn shown(&self) -> Shown {
        Shown::text(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_or_a_ca_needs_its_url() {
        let secret_alone = WebhookConfig {
            secret: Some("s".into()),
            ..WebhookConfig::default()
        };
        assert!(secret_alone
            .check()
            .unwrap_err()
            .contains("needs webhook-url"));
        let http = WebhookConfig {
            url: Some(WebhookUrl::parse("http://h/").unwrap()),
            ca: Some("ca.pem".into()),
            ..WebhookConfig::default()
        };
        assert!(http.check().unwrap_err().contains("https://"));
        let https = WebhookConfig {
            url: Some(WebhookUrl::parse("https://h/").unwrap()),
            ..http
        };
        assert!(https.check().is_ok());
    }

    #[test]
    fn the_url_is_shown_as_configured() {
        let url = WebhookUrl::from_setting("http://h:1".into(), "webhook-url").unwrap();
        assert_eq!(
            (url.path.as_str(), url.shown()),
            ("/", Shown::text("http://h:1"))
        );
        let error = WebhookUrl::from_setting("ftp://x".into(), "webhook-url").unwrap_err();
        assert!(error.starts_with("webhook-url must be"), "{error}");
    }
}
