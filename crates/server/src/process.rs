//! What a daemon does to its own process before serving: lift the open-file limit, and give
//! up root once the privileged ports are bound.

use tracing::{info, warn};

/// Why privileges could not be dropped (the daemon then does not start).
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("looking up user {user}")]
    Lookup {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("{step}")]
    Switch {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("privileges could be regained after dropping them")]
    Regainable,
}

/// A server holds a descriptor per connection: lift the soft limit to the hard one (often
/// 1,024 against 1,048,576), so `max_connections` and not the default limit decides.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => warn!(error = %e, soft, "could not raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not read the open-file limit"),
    }
}

/// Switches to `name`'s user and group (and only its group), for good.
pub fn drop_privileges(name: &str) -> Result<(), PrivilegeError> {
    use nix::unistd::{setgid, setgroups, setuid, Uid, User};
    let user = User::from_name(name)
        .map_err(|source| PrivilegeError::Lookup {
            user: name.to_owned(),
            source,
        })?
        .ok_or_else(|| PrivilegeError::NoSuchUser(name.to_owned()))?;
    let switch = |step| move |source| PrivilegeError::Switch { step, source };
    setgroups(&[user.gid]).map_err(switch("dropping supplementary groups"))?;
    setgid(user.gid).map_err(switch("switching group"))?;
    setuid(user.uid).map_err(switch("switching user"))?;
    if setuid(Uid::from_raw(0)).is_ok() && !user.uid.is_root() {
        return Err(PrivilegeError::Regainable);
    }
    info!(user = name, uid = user.uid.as_raw(), "dropped privileges");
    Ok(())
}
