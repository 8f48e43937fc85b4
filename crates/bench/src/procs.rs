//! Server processes: starting, stopping by PID, and what /proc says about them (CPU time and
//! resident memory of a process and all its descendants).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use testbed::nginx::Nginx;

/// A server we started; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ServerProcess {
    pub name: String,
    process: Process,
}

/// How the server was started.
enum Process {
    Child(Child),
    /// nginx, which [`testbed::nginx`] starts and stops.
    Nginx(Nginx),
}

impl ServerProcess {
    /// Starts `cmd` with stdout and stderr appended to `log`, then waits (at most 20 s) until
    /// `port` on loopback answers with a POP3 greeting.
    pub fn start(name: &str, mut cmd: Command, log: &Path, port: u16) -> Result<ServerProcess> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let server = ServerProcess {
            name: name.to_string(),
            process: Process::Child(child),
        };
        server.greeting(port, log)
    }

    /// nginx started (its pid file written), once `port` answers with a POP3 greeting.
    pub fn nginx(name: &str, nginx: Nginx, port: u16) -> Result<ServerProcess> {
        let log = nginx.prefix().join("error.log");
        let server = ServerProcess {
            name: name.to_string(),
            process: Process::Nginx(nginx),
        };
        server.greeting(port, &log)
    }

    /// Itself once `port` on loopback answers with a POP3 greeting (at most 20 s); an error
    /// pointing at `log` when it exits before or does not answer.
    fn greeting(mut self, port: u16, log: &Path) -> Result<ServerProcess> {
        let name = self.name.clone();
        let t0 = Instant::now();
        for _ in 0..400 {
            if let Some(status) = self.exited()? {
                bail!("{name} exited at start ({status}); see {}", log.display());
            }
            if greets(port) {
                return Ok(self);
            }
            if t0.elapsed() > Duration::from_secs(20) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{name} did not answer on port {port}; see {}",
            log.display()
        )
    }

    /// How it exited, if it has.
    fn exited(&mut self) -> Result<Option<String>> {
        Ok(match &mut self.process {
            Process::Child(child) => child.try_wait()?.map(|s| s.to_string()),
            Process::Nginx(nginx) => (!nginx.running()).then(|| "exited".to_string()),
        })
    }

    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Child(child) => child.id(),
            Process::Nginx(nginx) => nginx.pid(),
        }
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        let child = match &mut self.process {
            Process::Child(child) => child,
            Process::Nginx(nginx) => {
                if !nginx.stop() {
                    eprintln!("pop3-bench: {} ignored SIGTERM; killed it", self.name);
                }
                return;
            }
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("pop3-bench: {} ignored SIGTERM; killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn greets(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut b = [0u8; 3];
    s.read_exact(&mut b).is_ok() && &b == b"+OK"
}

/// A free loopback port (bound and released; the window for a race is small).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Clock ticks per second of /proc/PID/stat times.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

struct Stat {
    ppid: u32,
    /// utime + stime + cutime + cstime: the process's own CPU time plus that of the children it
    /// has reaped, so the work of a Dovecot process that already exited still counts.
    ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        ppid: num(4)? as u32,
        ticks: num(14)? + num(15)? + num(16)? + num(17)?,
    })
}

/// `root` and all its descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(st) = read_stat(pid) {
                children.entry(st.ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// CPU seconds used so far by `root`'s process tree.
pub fn cpu_seconds(root: u32, ticks_per_s: f64) -> f64 {
    tree(root)
        .into_iter()
        .filter_map(read_stat)
        .map(|s| s.ticks)
        .sum::<u64>() as f64
        / ticks_per_s
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of `root`'s tree, KiB.
pub fn rss_kib(root: u32) -> u64 {
    tree(root)
        .into_iter()
        .map(|p| status_kib(p, "VmRSS:"))
        .sum()
}

/// Proportional set size of `root`'s tree, KiB: each page shared by k processes counts 1/k,
/// so shared libraries and copy-on-write pages of forked workers are not counted k times.
pub fn pss_kib(root: u32) -> u64 {
    tree(root)
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/smaps_rollup"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("Pss:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Raises this process's open-file limit to its hard limit (idle-connection scenario); the
/// servers started afterwards inherit it. Returns the new soft limit.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// Samples the tree's resident memory every few milliseconds until stopped; `finish` returns
/// the peak (KiB).
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(root: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = rss_kib(root);
            let mut pids = tree(root);
            // Bounded: at most 10 minutes of samples. Walking all of /proc for the tree costs
            // milliseconds on a busy machine, so it is redone every 100 ms only, and the cheap
            // per-process reads every 5 ms.
            for i in 0..120_000u32 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if i % 20 == 19 {
                    pids = tree(root);
                }
                peak = peak.max(pids.iter().map(|&p| status_kib(p, "VmRSS:")).sum());
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        RssSampler { stop, handle }
    }

    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

/// The peak resident memory the kernel recorded for `pid` alone (VmHWM), KiB; `None` when
/// /proc does not say.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    Some(status_kib(pid, "VmHWM:")).filter(|&kib| kib > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(read_stat(me).is_some());
        assert!(tree(me).contains(&me));
        assert!(rss_kib(me) > 0);
        assert!(pss_kib(me) > 0);
        assert!(raise_nofile() > 0);
        assert!(cpu_seconds(me, clock_ticks()) >= 0.0);
    }
}
