//! What a running daemon hears from outside: SIGTERM and SIGINT stop it, SIGHUP reloads the
//! certificates, and systemd hears back `READY=1` once it serves and `STOPPING=1` when it
//! stops (`Type=notify` units; without `NOTIFY_SOCKET` nothing is sent).

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::Tls;

/// Tells systemd (or the test bed) the daemon is serving (`Ready`, with a `Status` naming its
/// listeners) or stopping (`Stopping`); without `NOTIFY_SOCKET` it does nothing.
pub fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "could not notify systemd");
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}

/// Reloads the certificates on SIGHUP; sessions in progress are not touched. `user` is the
/// user pop3d dropped to, if any: a reload reads the files as that user, so a failure says so.
pub async fn reload_on_sighup(tls: Arc<Tls>, user: Option<String>) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot watch SIGHUP; certificates will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(n) => info!(certificates = n, "SIGHUP: certificates reloaded"),
            Err(e) => match &user {
                Some(user) => error!(
                    error = %e,
                    %user,
                    "SIGHUP: reload failed (read as the user pop3d runs as: the files must be \
                     readable by it); keeping the old certificates"
                ),
                None => error!(error = %e, "SIGHUP: reload failed; keeping the old certificates"),
            },
        }
    }
}
