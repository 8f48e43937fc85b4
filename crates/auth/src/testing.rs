//! A SCRAM-SHA-256(-PLUS) client on rsasl, for tests of the server side (this crate's and the
//! session's over a real TLS connection): rsasl picks its own nonce, so an exchange is a round
//! trip between two implementations rather than a replay of fixed messages.

use std::sync::Arc;

use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::prelude::{Mechname, Registry, SASLClient, SASLConfig, Session, SessionError, State};
use rsasl::property::{AuthId, OverrideCBType, Password};
use rsasl::validate::NoValidation;

use crate::provider::{Binding, SCRAM_SHA256, SCRAM_SHA256_PLUS};
use crate::ChannelBinding;

struct Credentials {
    user: String,
    password: String,
    binding: Option<&'static str>,
}

impl SessionCallback for Credentials {
    fn callback(
        &self,
        _session: &SessionData,
        _context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        request
            .satisfy::<AuthId>(&self.user)?
            .satisfy::<Password>(self.password.as_bytes())?;
        if let Some(name) = self.binding {
            request.satisfy::<OverrideCBType>(name)?;
        }
        Ok(())
    }

    fn enable_channel_binding(&self) -> bool {
        self.binding.is_some()
    }
}

/// The client side of one SCRAM-SHA-256 exchange, or SCRAM-SHA-256-PLUS with `binding`.
pub struct ScramClient(Session<NoValidation, Binding>);

impl ScramClient {
    pub fn new(user: &str, password: &str, binding: Option<ChannelBinding>) -> ScramClient {
        static PLAIN_SCRAM: [rsasl::prelude::Mechanism; 1] = [SCRAM_SHA256];
        static PLUS: [rsasl::prelude::Mechanism; 1] = [SCRAM_SHA256_PLUS];
        let (registry, name): (&'static [_], &[u8]) = match binding {
            Some(_) => (&PLUS, b"SCRAM-SHA-256-PLUS"),
            None => (&PLAIN_SCRAM, b"SCRAM-SHA-256"),
        };
        let callback = Credentials {
            user: user.into(),
            password: password.into(),
            binding: binding.as_ref().map(|b| b.name),
        };
        let config: Arc<SASLConfig> = SASLConfig::builder()
            .with_registry(Registry::with_mechanisms(registry))
            .with_callback(callback)
            .expect("client config");
        let offered = [Mechname::parse(name).expect("name")];
        let session = SASLClient::with_cb(config, Binding(binding))
            .start_suggested(&offered)
            .expect("client session");
        ScramClient(session)
    }

    /// The client's next message (`None` input: the client-first); `Err` when the client
    /// refuses the server's message (a wrong server signature, say).
    pub fn step(&mut self, input: Option<&[u8]>) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        match self.0.step(input, &mut out) {
            Ok(State::Running | State::Finished(_)) => Ok(out),
            Err(e) => Err(e.to_string()),
        }
    }
}
