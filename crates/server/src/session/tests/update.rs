//! UPDATE (RFC 1939 section 6) and the ways out without it: a lost lock, the idle and login
//! timeouts, shutdown.

use super::*;

/// A session logged in with a zero lease and message 1 marked deleted, whose lock another
/// holder then took over (the lease was over): the fencing token changed under it.
async fn taken_over() -> (Fixture, Client, store::MaildropLock) {
    let f = Fixture::tuned(|c| c.lock_lease = Duration::ZERO);
    let mut c = f.connect().await;
    c.login().await;
    assert_eq!(c.cmd("DELE 1").await, ok_with(Text::Deleted, &[&1]));
    let intruder = f
        .store
        .lock_maildrop(f.alice, "intruder", Duration::from_secs(60))
        .expect("the expired lock is taken over");
    (f, c, intruder)
}

/// RFC 1939 section 6: QUIT in TRANSACTION enters UPDATE: the marked messages are removed,
/// the reply counts them and what is left, the connection closes.
#[tokio::test]
async fn rfc1939_s6_quit_in_transaction_updates() {
    let (f, mut c) = started().await;
    c.login().await;
    c.cmd("DELE 1").await;
    c.cmd("DELE 3").await;
    assert_eq!(c.cmd("QUIT").await, ok_with(Text::SigningOff, &[&2, &1]));
    c.closed().await;
    let left = f.store.list_messages(f.alice).expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].size, MESSAGES[1].len() as u64);
    // The lock was released: a new session logs in.
    let mut c = f.connect().await;
    c.cmd("USER alice").await;
    assert_eq!(
        c.cmd("PASS right").await,
        logged_in(1, MESSAGES[1].len() as u64)
    );
}

/// RFC 1939 section 6, RFC 3206: when the lock was lost before QUIT (its lease over and
/// taken by another holder: the fencing token changed), UPDATE fails `-ERR [SYS/TEMP]` and
/// deletes nothing.
#[tokio::test]
async fn rfc1939_s6_update_fails_sys_temp_when_the_lock_was_taken_over() {
    let (f, mut c, intruder) = taken_over().await;
    let failed = fill(Text::UpdateFailed, &[&text(Text::LockLost)]);
    assert_eq!(
        c.cmd("QUIT").await,
        render(|o| write_err(o, Some(ResponseCode::SysTemp), &failed))
    );
    c.closed().await;
    f.untouched();
    f.store.release_lock(&intruder).expect("release");
}

/// RFC 3206, the lock module: a lock the renewer finds lost ends the session at its next
/// command with `-ERR [SYS/TEMP]`, without UPDATE.
#[tokio::test]
async fn rfc3206_lost_lock_ends_the_session_at_the_next_command() {
    let (f, mut c, _intruder) = taken_over().await;
    f.shared.locks.renew_once().await;
    let lost = err(ErrReply {
        code: Some(ResponseCode::SysTemp),
        text: Text::LockLost,
    });
    assert_eq!(c.cmd("NOOP").await, lost);
    c.closed().await;
    f.untouched();
}

/// RFC 1939 section 3: the inactivity autologout closes a TRANSACTION session without a
/// reply and without UPDATE, and lets the lock go.
#[tokio::test]
async fn rfc1939_s3_idle_timeout_closes_without_update() {
    let f = Fixture::tuned(|c| c.idle_timeout = Duration::from_millis(200));
    let mut c = f.connect().await;
    c.login().await;
    c.cmd("DELE 1").await;
    c.closed().await;
    f.untouched();
    assert_eq!(f.shared.locks.count(), 0);
}

/// RFC 1939 section 3: a login must complete within `login_timeout`; then `-ERR` and close.
#[tokio::test]
async fn rfc1939_s3_login_timeout_closes_authorization() {
    let f = Fixture::tuned(|c| c.login_timeout = Duration::from_millis(200));
    let mut c = f.connect().await;
    c.cmd("USER alice").await;
    assert_eq!(c.line().await, refused(Text::LoginTimeout));
    c.closed().await;
}

/// RFC 3206: at shutdown a session is told `-ERR [SYS/TEMP]` and closed without UPDATE.
#[tokio::test]
async fn rfc3206_shutdown_closes_sessions_with_sys_temp() {
    let (f, mut c) = started().await;
    c.login().await;
    c.cmd("DELE 1").await;
    f.stop.send(true).expect("shutdown");
    assert_eq!(c.line().await, err(reply::SHUTTING_DOWN));
    c.closed().await;
    f.untouched();
}
