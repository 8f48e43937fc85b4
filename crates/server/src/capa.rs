//! The CAPA list (RFC 2449 section 5), shared by the sessions and by the nginx configuration
//! generator, so nginx announces before login what pop3d itself would.

use std::time::Duration;

use store::Expire;

use crate::Config;

/// What the list depends on besides the configuration.
pub(crate) struct Context<'a> {
    /// USER/PASS usable on this connection now.
    pub cleartext: bool,
    /// STLS offered.
    pub stls: bool,
    /// SASL mechanisms offered.
    pub mechanisms: &'a [&'a str],
    /// After login: the account's own LOGIN-DELAY and EXPIRE (RFC 2449 sections 6.5, 6.7).
    pub logged_in: Option<(Duration, Expire)>,
}

/// The capabilities, in the order they are announced.
pub(crate) fn list(config: &Config, ctx: &Context<'_>) -> Vec<String> {
    let mut caps: Vec<String> = vec!["TOP".into(), "UIDL".into()];
    if ctx.cleartext {
        caps.push("USER".into());
    }
    if ctx.stls {
        caps.push("STLS".into());
    }
    if !ctx.mechanisms.is_empty() {
        caps.push(format!("SASL {}", ctx.mechanisms.join(" ")));
    }
    caps.extend(["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"].map(String::from));
    match ctx.logged_in {
        None => {
            caps.push(format!("LOGIN-DELAY {} USER", config.login_delay.as_secs()));
            caps.push(format!("EXPIRE {} USER", expire_value(config.expire)));
        }
        Some((login_delay, expire)) => {
            caps.push(format!("LOGIN-DELAY {}", login_delay.as_secs()));
            caps.push(format!("EXPIRE {}", expire_value(expire)));
        }
    }
    caps.push("UTF8 USER".into());
    caps.push("LANG".into());
    if let Some(imp) = &config.implementation {
        caps.push(format!("IMPLEMENTATION {imp}"));
    }
    caps
}

/// What nginx's mail proxy should announce before login (`pop3_capabilities`): pop3d's own
/// pre-login list without what nginx itself adds (STLS and SASL, from its `starttls` and
/// `pop3_auth`) and without the commands nginx does not proxy before login (UTF8 and LANG,
/// RFC 6856: nginx would answer them `-ERR`).
pub fn nginx_capabilities(config: &Config) -> Vec<String> {
    let ctx = Context {
        cleartext: true,
        stls: false,
        mechanisms: &[],
        logged_in: None,
    };
    list(config, &ctx)
        .into_iter()
        .filter(|c| !(c.starts_with("UTF8") || c == "LANG"))
        .collect()
}

/// The EXPIRE argument: `NEVER` or days.
pub(crate) fn expire_value(e: Expire) -> String {
    match e {
        Expire::Never => "NEVER".into(),
        Expire::Days(d) => d.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_gets_the_pre_login_list_without_what_it_adds_or_cannot_proxy() {
        let config = Config {
            implementation: Some("pop3d".into()),
            ..Config::default()
        };
        assert_eq!(
            nginx_capabilities(&config),
            [
                "TOP",
                "UIDL",
                "USER",
                "RESP-CODES",
                "AUTH-RESP-CODE",
                "PIPELINING",
                "LOGIN-DELAY 0 USER",
                "EXPIRE NEVER USER",
                "IMPLEMENTATION pop3d"
            ]
        );
    }
}
