//! The one place where internal errors become POP3 replies (RFC 2449 section 8, RFC 3206).

use proto::{CommandError, ResponseCode};
use store::StoreError;

use crate::lang::Text;
use crate::maildrop::NumberError;

/// A `-ERR` reply: its response code and text (rendered in the session's language).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrReply {
    pub code: Option<ResponseCode>,
    pub text: Text,
}

const fn err(code: Option<ResponseCode>, text: Text) -> ErrReply {
    ErrReply { code, text }
}

/// Failures of the server's own machinery around the store.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Hashing(#[from] crate::hashpool::PoolGone),
}

/// Runs a store call on tokio's blocking threads (SQLite and PostgreSQL calls block), its
/// error and a failed task both as a [`SessionError`]. The call starts at once, not when the
/// result is first awaited, so a caller can start the next read before it writes this one.
pub(crate) fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> impl std::future::Future<Output = Result<T, SessionError>> + Send {
    let task = tokio::task::spawn_blocking(f);
    async move { Ok(task.await??) }
}

pub const BAD_CREDENTIALS: ErrReply = err(Some(ResponseCode::Auth), Text::BadCredentials);
pub const SHUTTING_DOWN: ErrReply = err(Some(ResponseCode::SysTemp), Text::ShuttingDown);
/// The node is draining (`popadm node drain`): no new logins, the client should come back.
pub const DRAINING: ErrReply = err(Some(ResponseCode::SysTemp), Text::Draining);
pub const TOO_MANY_BAD_COMMANDS: ErrReply = err(None, Text::TooManyBad);
/// Too many failed logins on one connection: it is closed.
pub const TOO_MANY_AUTH_FAILURES: ErrReply =
    err(Some(ResponseCode::Auth), Text::TooManyAuthFailures);
/// A KPOP listener accepts Kerberos only.
pub const KERBEROS_ONLY: ErrReply = err(Some(ResponseCode::Auth), Text::KerberosOnly);
/// RFC 2595 section 2.2 / RFC 8314: cleartext credentials refused before TLS.
pub const CLEARTEXT_REFUSED: ErrReply = err(Some(ResponseCode::Auth), Text::CleartextRefused);
/// RFC 6856 section 3.3: a message with UTF-8 headers needs UTF8 mode.
pub const UTF8_NEEDED: ErrReply = err(Some(ResponseCode::Utf8), Text::Utf8Needed);

/// Maps a store or task failure to its reply.
pub fn session_error(e: &SessionError) -> ErrReply {
    match e {
        SessionError::Store(e) => store_error(e),
        SessionError::Task(_) | SessionError::Hashing(_) => {
            err(Some(ResponseCode::SysTemp), Text::Internal)
        }
    }
}

fn store_error(e: &StoreError) -> ErrReply {
    match e {
        // RFC 2449 section 8.1.1: the credentials were fine but the maildrop is busy.
        StoreError::Locked { .. } => err(Some(ResponseCode::InUse), Text::InUse),
        StoreError::LockLost => err(Some(ResponseCode::SysTemp), Text::LockLost),
        // A login that names no account is refused like a wrong password.
        StoreError::NoSuchAccount(_) | StoreError::InvalidName { .. } => BAD_CREDENTIALS,
        StoreError::SchemaTooNew { .. } => err(Some(ResponseCode::SysPerm), Text::Operator),
        e if e.is_transient() => err(Some(ResponseCode::SysTemp), Text::TempFailure),
        _ => err(Some(ResponseCode::SysPerm), Text::PermFailure),
    }
}

/// Maps a message-number problem to its reply.
pub fn number_error(e: NumberError) -> ErrReply {
    match e {
        NumberError::NoSuchMessage => err(None, Text::NoSuchMessage),
        NumberError::Deleted => err(None, Text::AlreadyDeleted),
    }
}

/// Maps a command line the codec refused to its reply.
pub fn command_error(e: &CommandError) -> ErrReply {
    match e {
        CommandError::LineTooLong => err(None, Text::LineTooLong),
        CommandError::Empty => err(None, Text::EmptyCommand),
        CommandError::Unknown => err(None, Text::UnknownCommand),
        CommandError::MissingArgument(_) => err(None, Text::MissingArgument),
        CommandError::TooManyArguments(_) => err(None, Text::TooManyArguments),
        CommandError::InvalidNumber(_) => err(None, Text::InvalidNumber),
        CommandError::InvalidArgument(_) => err(None, Text::InvalidArgument),
        CommandError::ControlCharacter => err(None, Text::ControlCharacter),
        CommandError::NotUtf8 => err(None, Text::NotUtf8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_rfc_3206() {
        let locked = SessionError::Store(StoreError::Locked { holder: "x".into() });
        assert_eq!(session_error(&locked).code, Some(ResponseCode::InUse));
        let busy = SessionError::Store(StoreError::Busy);
        assert_eq!(session_error(&busy).code, Some(ResponseCode::SysTemp));
        let full = SessionError::Store(StoreError::Full);
        assert_eq!(session_error(&full).code, Some(ResponseCode::SysTemp));
        let schema = SessionError::Store(StoreError::SchemaTooNew {
            found: 9,
            supported: 1,
        });
        assert_eq!(session_error(&schema).code, Some(ResponseCode::SysPerm));
        let unknown = SessionError::Store(StoreError::NoSuchAccount("x".into()));
        assert_eq!(session_error(&unknown), BAD_CREDENTIALS);
    }
}
