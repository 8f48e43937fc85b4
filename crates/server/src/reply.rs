//! The one place where internal errors become POP3 replies (RFC 2449 section 8, RFC 3206).

use proto::{CommandError, ResponseCode};
use store::StoreError;

use crate::maildrop::NumberError;

/// A `-ERR` reply: its response code and text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrReply {
    pub code: Option<ResponseCode>,
    pub text: &'static str,
}

const fn err(code: Option<ResponseCode>, text: &'static str) -> ErrReply {
    ErrReply { code, text }
}

/// Failures of the server's own machinery around the store.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub const BAD_CREDENTIALS: ErrReply =
    err(Some(ResponseCode::Auth), "invalid user name or password");
pub const SHUTTING_DOWN: ErrReply = err(
    Some(ResponseCode::SysTemp),
    "server shutting down, try again later",
);
pub const TOO_MANY_BAD_COMMANDS: ErrReply = err(None, "too many bad commands, closing");

/// Maps a store or task failure to its reply.
pub fn session_error(e: &SessionError) -> ErrReply {
    match e {
        SessionError::Store(e) => store_error(e),
        SessionError::Task(_) => err(
            Some(ResponseCode::SysTemp),
            "internal error, try again later",
        ),
    }
}

fn store_error(e: &StoreError) -> ErrReply {
    match e {
        // RFC 2449 section 8.1.1: the credentials were fine but the maildrop is busy.
        StoreError::Locked { .. } => err(
            Some(ResponseCode::InUse),
            "maildrop already locked by another session",
        ),
        StoreError::LockLost => err(
            Some(ResponseCode::SysTemp),
            "maildrop lock lost; nothing was deleted",
        ),
        // A login that names no account is refused like a wrong password.
        StoreError::NoSuchAccount(_) | StoreError::InvalidName { .. } => BAD_CREDENTIALS,
        StoreError::SchemaTooNew { .. } => err(
            Some(ResponseCode::SysPerm),
            "maildrop store needs an operator",
        ),
        e if e.is_transient() => err(
            Some(ResponseCode::SysTemp),
            "maildrop temporarily unavailable, try again later",
        ),
        _ => err(
            Some(ResponseCode::SysPerm),
            "maildrop unavailable; please contact the administrator",
        ),
    }
}

/// Maps a message-number problem to its reply.
pub fn number_error(e: NumberError) -> ErrReply {
    match e {
        NumberError::NoSuchMessage => err(None, "no such message"),
        NumberError::Deleted => err(None, "message already deleted"),
    }
}

/// Maps a command line the codec refused to its reply.
pub fn command_error(e: &CommandError) -> ErrReply {
    match e {
        CommandError::LineTooLong => err(None, "line too long (limit 255 octets)"),
        CommandError::Empty => err(None, "empty command"),
        CommandError::Unknown => err(None, "unknown command"),
        CommandError::MissingArgument(_) => err(None, "missing argument"),
        CommandError::TooManyArguments(_) => err(None, "too many arguments"),
        CommandError::InvalidNumber(_) => err(None, "invalid number"),
        CommandError::InvalidArgument(_) => err(None, "invalid argument"),
        CommandError::ControlCharacter => err(None, "control character in command"),
        CommandError::NotUtf8 => err(None, "command is not valid UTF-8"),
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
