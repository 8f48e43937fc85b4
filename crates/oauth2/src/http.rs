//! The identity provider over HTTPS: a blocking ureq agent on rustls with the ring provider,
//! trusting Mozilla's roots or the configured CA file only, https only, no redirects, every
//! request bounded by [`Limits::timeout`] and every body by a size given by the caller.

use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

use crate::{ConfigError, Limits};

/// A response's body and its Cache-Control max-age, if any.
pub struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<Duration>,
}

pub struct Http {
    agent: ureq::Agent,
}

impl Http {
    /// An agent trusting `ca_pem` (PEM certificates) when given, else Mozilla's roots.
    pub fn new(ca_pem: Option<&[u8]>, limits: &Limits) -> Result<Http, ConfigError> {
        let roots = match ca_pem {
            None => RootCerts::WebPki,
            Some(pem) => {
                let certs = ureq::tls::parse_pem(pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<Vec<Certificate<'static>>, _>>()
                    .map_err(|e| ConfigError::Invalid(format!("ca_file: {e}")))?;
                if certs.is_empty() {
                    return Err(ConfigError::Invalid(
                        "ca_file holds no PEM certificate".into(),
                    ));
                }
                RootCerts::Specific(Arc::new(certs))
            }
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(roots)
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_global(Some(limits.timeout))
            .user_agent(concat!("pop3d-oauth2/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Http {
            agent: ureq::Agent::new_with_config(config),
        })
    }

    /// GET `url`, at most `limit` octets of body.
    pub fn get(&self, url: &str, limit: u64) -> Result<Fetched, String> {
        let response = self
            .agent
            .get(url)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        read(url, response, limit)
    }

    /// POST a form to `url` with HTTP Basic credentials, at most `limit` octets of body.
    pub fn post_form(
        &self,
        url: &str,
        basic: &str,
        form: &[(&str, &str)],
        limit: u64,
    ) -> Result<Fetched, String> {
        let response = self
            .agent
            .post(url)
            .header("Accept", "application/json")
            .header("Authorization", basic)
            .send_form(form.iter().copied())
            .map_err(|e| format!("POST {url}: {e}"))?;
        read(url, response, limit)
    }
}

fn read(
    url: &str,
    mut response: ureq::http::Response<ureq::Body>,
    limit: u64,
) -> Result<Fetched, String> {
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{url} answered HTTP {}", status.as_u16()));
    }
    let max_age = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let body = response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => {
                format!("{url}: the response is larger than {limit} octets")
            }
            e => format!("{url}: {e}"),
        })?;
    Ok(Fetched { body, max_age })
}

/// The max-age of a Cache-Control header; `no-cache` and `no-store` count as 0.
pub fn max_age(header: &str) -> Option<Duration> {
    let mut age = None;
    for directive in header.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        let s = Duration::from_secs;
        assert_eq!(max_age("public, max-age=3600"), Some(s(3600)));
        assert_eq!(max_age("Max-Age=\"60\""), Some(s(60)));
        assert_eq!(max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age("max-age=60, no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
