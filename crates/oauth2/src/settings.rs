//! What an operator configures: pop3d's TOML `[oauth2]` table ([`Settings`], which popadm
//! reads from the same file), the flags pop3d and `popadm oauth2 check` share ([`Flags`],
//! behind the `clap` feature), the layering of the two (flag, else file) and the rules the
//! result must keep ([`Settings::check`]), written once for both programs.

use std::path::PathBuf;

use serde::Deserialize;

use crate::ConfigError;

/// The claim that names the account when none is configured.
pub const DEFAULT_USERNAME_CLAIM: &str = "email";

/// The `[oauth2]` table as written (every key optional; [`Settings::check`] says which are
/// needed together).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The identity provider's issuer URL, exactly as its tokens' `iss` claim carries it; its
    /// `/.well-known/openid-configuration` gives the JWKS URL.
    pub issuer: Option<String>,
    /// The JWKS URL, instead of discovering it.
    pub jwks_url: Option<String>,
    /// Audiences accepted in `aud` (one must match).
    #[serde(default)]
    pub audience: Vec<String>,
    /// The claim carrying the account name [default: `email`].
    pub username_claim: Option<String>,
    /// RFC 7662 introspection endpoint, for opaque (non-JWT) tokens.
    pub introspection_url: Option<String>,
    /// This server's client id at the introspection endpoint.
    pub client_id: Option<String>,
    /// A file holding the client secret (read at start, before privileges are dropped).
    pub client_secret_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for the identity provider instead of Mozilla's roots.
    pub ca_file: Option<PathBuf>,
}

/// The OAuth 2.0 flags of pop3d and `popadm oauth2 check`: each replaces the file's key.
#[cfg(feature = "clap")]
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Flags {
    /// OAuth 2.0 issuer URL (https): tokens' `iss`; its /.well-known/openid-configuration
    /// gives the JWKS. Enables OAUTHBEARER and XOAUTH2.
    #[arg(long = "oauth2-issuer", value_name = "URL")]
    pub issuer: Option<String>,
    /// JWKS URL (https) instead of the issuer's discovery document.
    #[arg(long = "oauth2-jwks-url", value_name = "URL")]
    pub jwks_url: Option<String>,
    /// Audience a token's `aud` must contain (this service's client id or resource URI);
    /// repeatable, one match suffices. Replaces the file's `audience`.
    #[arg(long = "oauth2-audience", value_name = "AUD")]
    pub audience: Vec<String>,
    /// Claim naming the account: email, preferred_username, sub or any other [default: email].
    #[arg(long = "oauth2-username-claim", value_name = "NAME")]
    pub username_claim: Option<String>,
    /// RFC 7662 introspection endpoint (https) for opaque tokens.
    #[arg(long = "oauth2-introspection-url", value_name = "URL")]
    pub introspection_url: Option<String>,
    /// Client id at the introspection endpoint.
    #[arg(long = "oauth2-client-id", value_name = "ID")]
    pub client_id: Option<String>,
    /// File holding the introspection client secret.
    #[arg(long = "oauth2-client-secret-file", value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// CA certificates (PEM) for the identity provider's TLS, instead of Mozilla's roots.
    #[arg(long = "oauth2-ca-file", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

#[cfg(feature = "clap")]
impl Flags {
    /// The flags over the file's table: each flag given replaces the file's key. `None` when
    /// neither sets anything (OAuth 2.0 off).
    pub fn over(&self, file: Option<Settings>) -> Option<Settings> {
        let f = file.unwrap_or_default();
        let layered = Settings {
            issuer: self.issuer.clone().or(f.issuer),
            jwks_url: self.jwks_url.clone().or(f.jwks_url),
            audience: if self.audience.is_empty() {
                f.audience
            } else {
                self.audience.clone()
            },
            username_claim: self.username_claim.clone().or(f.username_claim),
            introspection_url: self.introspection_url.clone().or(f.introspection_url),
            client_id: self.client_id.clone().or(f.client_id),
            client_secret_file: self.client_secret_file.clone().or(f.client_secret_file),
            ca_file: self.ca_file.clone().or(f.ca_file),
        };
        (layered != Settings::default()).then_some(layered)
    }
}

impl Settings {
    /// The claim naming the account.
    pub fn username_claim(&self) -> &str {
        self.username_claim
            .as_deref()
            .unwrap_or(DEFAULT_USERNAME_CLAIM)
    }

    /// The rules: an issuer (https) with at least one audience; https URLs; introspection with
    /// a client id and a secret file; a non-empty claim name. Files are not read here.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let Some(issuer) = &self.issuer else {
            return bad("an issuer is needed (oauth2 issuer / --oauth2-issuer)".into());
        };
        https("issuer", issuer)?;
        if let Some(url) = &self.jwks_url {
            https("jwks_url", url)?;
        }
        if self.audience.is_empty() {
            return bad(
                "at least one audience is needed with an issuer (oauth2 audience / \
                 --oauth2-audience): without it any token of the issuer would do"
                    .into(),
            );
        }
        if self.audience.iter().any(|a| a.trim().is_empty()) {
            return bad("an audience is empty".into());
        }
        let claim = self.username_claim();
        if claim.is_empty() || claim.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad(format!("username_claim {claim:?} is not a claim name"));
        }
        match (
            &self.introspection_url,
            &self.client_id,
            &self.client_secret_file,
        ) {
            (None, None, None) => {}
            (Some(url), Some(id), Some(_)) => {
                https("introspection_url", url)?;
                if id.is_empty() || id.contains(':') {
                    return bad(format!("client_id {id:?} is empty or holds a colon"));
                }
            }
            _ => {
                return bad("introspection needs introspection_url, client_id and \
                     client_secret_file together"
                    .into())
            }
        }
        Ok(())
    }
}

/// `url` is an absolute https URL with a host.
fn https(key: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url.strip_prefix("https://").ok_or_else(|| {
        ConfigError::Invalid(format!("{key} must be an https:// URL, not {url:?}"))
    })?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::Invalid(format!(
            "{key} {url:?} is not a URL with a host"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Settings {
        Settings {
            issuer: Some("https://idp.example.org/realms/mail".into()),
            audience: vec!["pop3".into()],
            ..Settings::default()
        }
    }

    #[test]
    fn minimal_settings_pass_and_default_claim_is_email() {
        minimal().check().expect("minimal");
        assert_eq!(minimal().username_claim(), "email");
    }

    #[test]
    fn the_rules_are_explained() {
        let cases: Vec<(Settings, &str)> = vec![
            (Settings::default(), "issuer is needed"),
            (
                Settings {
                    issuer: Some("http://idp.example.org".into()),
                    ..minimal()
                },
                "https://",
            ),
            (
                Settings {
                    audience: vec![],
                    ..minimal()
                },
                "audience",
            ),
            (
                Settings {
                    jwks_url: Some("http://idp/jwks".into()),
                    ..minimal()
                },
                "jwks_url",
            ),
            (
                Settings {
                    introspection_url: Some("https://idp/introspect".into()),
                    ..minimal()
                },
                "together",
            ),
            (
                Settings {
                    introspection_url: Some("https://idp/introspect".into()),
                    client_id: Some("a:b".into()),
                    client_secret_file: Some("s".into()),
                    ..minimal()
                },
                "colon",
            ),
            (
                Settings {
                    username_claim: Some("".into()),
                    ..minimal()
                },
                "claim",
            ),
            (
                Settings {
                    issuer: Some("https:///x".into()),
                    ..minimal()
                },
                "host",
            ),
        ];
        for (s, needle) in cases {
            let err = s.check().expect_err(needle).to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
