//! Exit codes. `deliver` follows sysexits(3) because MTAs read them (Postfix and Exim bounce on
//! 65, 67 and 77 and retry later on 75); the other commands exit 1 on error, 67 for an unknown
//! account or node and 64 for usage errors.

use store::StoreError;

use crate::bearer::{Refused, Unavailable};
use crate::deliver::BadSender;

/// EX_USAGE: the command line was wrong.
pub const EX_USAGE: u8 = 64;
/// EX_DATAERR: the message (or account name) is unacceptable; the MTA bounces.
pub const EX_DATAERR: u8 = 65;
/// EX_NOUSER: no such account; the MTA bounces.
pub const EX_NOUSER: u8 = 67;
/// EX_TEMPFAIL: try again later; the MTA keeps the message queued.
pub const EX_TEMPFAIL: u8 = 75;
/// EX_NOPERM: the mailbox is full (over its quota), which the MTA bounces; for `oauth2 check`,
/// pop3d would refuse the token.
pub const EX_NOPERM: u8 = 77;

/// Generic failure of an administrative command.
const FAILURE: u8 = 1;

/// The first store error in the chain of causes.
fn store_error(e: &anyhow::Error) -> Option<&StoreError> {
    e.chain().find_map(|c| c.downcast_ref::<StoreError>())
}

/// Exit code of a failed administrative command: 67 for an unknown account or node; for
/// `oauth2 check` 77 for a refused token and 75 for an identity provider that cannot answer;
/// else 1.
pub fn admin_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<Refused>()) {
        return EX_NOPERM;
    }
    if e.chain().any(|c| c.is::<Unavailable>()) {
        return EX_TEMPFAIL;
    }
    match store_error(e) {
        Some(StoreError::NoSuchAccount(_) | StoreError::NoSuchNode(_)) => EX_NOUSER,
        _ => FAILURE,
    }
}

/// Exit code of a failed delivery. Anything not known to be permanent is temporary: a message
/// kept in the MTA's queue can still be delivered once the trouble is fixed, a bounced one is
/// lost to its recipient.
pub fn deliver_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<BadSender>()) {
        return EX_DATAERR;
    }
    match store_error(e) {
        Some(StoreError::NoSuchAccount(_)) => EX_NOUSER,
        Some(StoreError::OverQuota { .. }) => EX_NOPERM,
        Some(
            StoreError::InvalidName { .. }
            | StoreError::TooLarge { .. }
            | StoreError::InvalidMessage(_),
        ) => EX_DATAERR,
        _ => EX_TEMPFAIL,
    }
}

/// [`deliver_code`] with `--quota-full-temporary`: a full mailbox keeps the message queued
/// (75), as the operator prefers a sender's retries to a bounce.
pub fn deliver_code_quota_temporary(e: &anyhow::Error) -> u8 {
    match store_error(e) {
        Some(StoreError::OverQuota { .. }) => EX_TEMPFAIL,
        _ => deliver_code(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(e: StoreError) -> anyhow::Error {
        anyhow::Error::new(e).context("delivering")
    }

    #[test]
    fn deliver_codes_follow_sysexits() {
        let cases: Vec<(StoreError, u8)> = vec![
            (StoreError::NoSuchAccount("bob".into()), EX_NOUSER),
            (
                StoreError::InvalidName {
                    name: "a b".into(),
                    reason: "space",
                },
                EX_DATAERR,
            ),
            (StoreError::TooLarge { size: 10, limit: 5 }, EX_DATAERR),
            (StoreError::InvalidMessage("empty message"), EX_DATAERR),
            (StoreError::Busy, EX_TEMPFAIL),
            (StoreError::Full, EX_TEMPFAIL),
            (StoreError::Io(std::io::Error::other("disk")), EX_TEMPFAIL),
            (
                StoreError::Input(std::io::Error::other("pipe")),
                EX_TEMPFAIL,
            ),
            (
                StoreError::SchemaTooNew {
                    found: 9,
                    supported: 1,
                },
                EX_TEMPFAIL,
            ),
        ];
        for (err, code) in cases {
            let msg = err.to_string();
            let err = wrapped(err);
            assert_eq!(deliver_code(&err), code, "{msg}");
            assert_eq!(deliver_code_quota_temporary(&err), code, "{msg}");
        }
        let full = || {
            wrapped(StoreError::OverQuota {
                account: "bob".into(),
                detail: "messages".into(),
            })
        };
        assert_eq!(deliver_code(&full()), EX_NOPERM);
        assert_eq!(deliver_code_quota_temporary(&full()), EX_TEMPFAIL);
        assert_eq!(deliver_code(&anyhow::anyhow!("stdin closed")), EX_TEMPFAIL);
        let bad = anyhow::Error::new(BadSender("a\nb".into())).context("delivering");
        assert_eq!(deliver_code(&bad), EX_DATAERR);
    }

    #[test]
    fn admin_codes() {
        assert_eq!(
            admin_code(&wrapped(StoreError::NoSuchAccount("x".into()))),
            EX_NOUSER
        );
        assert_eq!(admin_code(&wrapped(StoreError::Busy)), FAILURE);
        assert_eq!(admin_code(&anyhow::anyhow!("nope")), FAILURE);
    }
}
