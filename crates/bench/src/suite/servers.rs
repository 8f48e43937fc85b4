//! The servers under test, held by name: each [`Server`] (pop3d, and Dovecot with
//! `--against dovecot`) runs as a [`Lineup`] of instances, one per [`Role`] a scenario asks
//! for.

use crate::procs::{self, ServerProcess};

/// A running server under test.
pub struct Endpoint {
    pub name: String,
    pub plain: u16,
    pub tls: u16,
    /// Its processes, stopped in this order; the first is the one whose memory S3 and S4
    /// sample.
    pub processes: Vec<ServerProcess>,
    /// Further process trees whose CPU time counts as the server's (a PostgreSQL store's).
    pub store_pids: Vec<u32>,
}

impl Endpoint {
    pub fn new(name: &str, plain: u16, tls: u16, process: ServerProcess) -> Endpoint {
        Endpoint {
            name: name.into(),
            plain,
            tls,
            processes: vec![process],
            store_pids: Vec::new(),
        }
    }

    /// The first process's id.
    pub fn pid(&self) -> u32 {
        self.processes.first().map_or(0, ServerProcess::pid)
    }

    /// CPU seconds used so far by all its processes and their store's.
    pub fn cpu_seconds(&self, ticks: f64) -> f64 {
        self.processes
            .iter()
            .map(ServerProcess::pid)
            .chain(self.store_pids.iter().copied())
            .map(|pid| procs::cpu_seconds(pid, ticks))
            .sum()
    }

    pub fn stop(&mut self) {
        for p in &mut self.processes {
            p.stop();
        }
    }
}

/// The servers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Pop3d,
    Dovecot,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Pop3d => "pop3d",
            Server::Dovecot => "dovecot",
        }
    }
}

/// What an instance of a server is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every scenario but those below; credential caches off.
    Plain,
    /// S1c and S2c: credential caches on.
    Cached,
    /// S4's two phases, each on a fresh instance (so its memory is not what earlier
    /// scenarios left and freed).
    Idle1,
    Idle2,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Plain, Role::Cached, Role::Idle1, Role::Idle2];

    /// The instance's name in the report: `pop3d`, `dovecot+cache`, `pop3d-idle1` ...
    pub fn name(self, server: Server) -> String {
        let suffix = match self {
            Role::Plain => "",
            Role::Cached => "+cache",
            Role::Idle1 => "-idle1",
            Role::Idle2 => "-idle2",
        };
        format!("{}{suffix}", server.name())
    }

    /// S4's phase `k` (0 or 1).
    pub fn idle(k: usize) -> Role {
        if k == 0 {
            Role::Idle1
        } else {
            Role::Idle2
        }
    }
}

/// One server's instances.
pub struct Lineup {
    pub plain: Endpoint,
    pub cached: Endpoint,
    pub idle: [Endpoint; 2],
}

impl Lineup {
    pub fn get(&self, role: Role) -> &Endpoint {
        match role {
            Role::Plain => &self.plain,
            Role::Cached => &self.cached,
            Role::Idle1 => &self.idle[0],
            Role::Idle2 => &self.idle[1],
        }
    }

    fn stop(&mut self) {
        for ep in [&mut self.plain, &mut self.cached]
            .into_iter()
            .chain(&mut self.idle)
        {
            ep.stop();
        }
    }
}

/// pop3d's instances and, side by side, Dovecot's.
pub struct Servers {
    pub pop3d: Lineup,
    pub dovecot: Option<Lineup>,
}

impl Servers {
    /// The instances for `role`: pop3d's first, then Dovecot's.
    pub fn each(&self, role: Role) -> Vec<&Endpoint> {
        std::iter::once(&self.pop3d)
            .chain(&self.dovecot)
            .map(|l| l.get(role))
            .collect()
    }

    pub fn stop(&mut self) {
        self.pop3d.stop();
        if let Some(d) = &mut self.dovecot {
            d.stop();
        }
    }
}
