//! The servers and services the tests (and `cargo xtask bench`) start: each in a process group
//! of its own, so that stopping one stops everything it forked.
//!
//! Killing only the process we spawned is not enough: nginx's master forks its workers, and a
//! worker whose master was SIGKILLed is re-parented to init and keeps listening. A peer is
//! instead asked to stop with the signal it handles (nginx's master forwards SIGTERM to its
//! workers and reaps them before it exits), and whatever is left in its group afterwards is
//! killed.

use std::io;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::HarnessError;

/// How long a peer has to stop on its stop signal before its whole group is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the group's last processes have to die once SIGKILLed.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// A process the tests started, the leader of its own process group; stopped with every
/// process of that group when dropped.
pub struct Peer {
    child: Child,
    stop_signal: i32,
    stopped: bool,
}

impl Peer {
    /// Spawns `cmd` as the leader of a new process group. `stop_signal` is what makes it stop
    /// and take its own children with it (SIGTERM for nginx's master); it is also sent when
    /// the thread that spawned the peer dies first (a test process killed or aborted), since
    /// a process group of its own no longer receives the terminal's Ctrl-C.
    pub fn spawn(cmd: &mut Command, stop_signal: i32) -> io::Result<Peer> {
        let parent = std::process::id();
        cmd.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, stop_signal as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent died between fork and prctl: nobody would stop this peer.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("the test process is gone"));
                }
                Ok(())
            });
        }
        Ok(Peer {
            child: cmd.spawn()?,
            stop_signal,
            stopped: false,
        })
    }

    /// The pid of the process spawned, which is also its process group id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited (without waiting).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits (at most `timeout`) until something listens on 127.0.0.1:`port`; fails at once
    /// when the peer (called `what` in the error) exits first.
    pub fn wait_listening(
        &mut self,
        what: &'static str,
        port: u16,
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(HarnessError::Exited { what, port, status });
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::NotListening { port, timeout });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the peer and every process of its group, bounded in time: the stop signal,
    /// SIGKILL to the group when the peer outlives [`STOP_GRACE`], then SIGKILL to what is
    /// left in the group (processes the peer left behind), waiting for them to die.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let group = self.id() as i32;
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling the process we spawned (not yet reaped, so its pid is ours).
            unsafe { libc::kill(group, self.stop_signal) };
            let deadline = Instant::now() + STOP_GRACE;
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() >= deadline {
                    eprintln!(
                        "peer {group} did not stop within {STOP_GRACE:?} of signal {}: killing its process group",
                        self.stop_signal
                    );
                    // SAFETY: the group is the one the peer leads.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if live_group_members(group).is_empty() {
            return;
        }
        // SAFETY: processes of the group the peer led; the group id cannot be reused while
        // any of them lives.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let deadline = Instant::now() + KILL_GRACE;
        loop {
            let left = live_group_members(group);
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                eprintln!("processes {left:?} of peer {group}'s group survived SIGKILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pids of the processes of process group `pgid` that have not exited (zombies excluded:
/// they hold no socket, and an orphan's is for init to reap).
pub fn live_group_members(pgid: i32) -> Vec<u32> {
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat_state_pgrp(&stat))
                .is_some_and(|(state, pgrp)| pgrp == pgid && state != 'Z' && state != 'X')
        })
        .collect()
}

/// State and process group from a /proc/PID/stat line (fields 3 and 5; comm, field 2, may
/// hold spaces and parentheses, so the fields are counted from its last `)`).
fn parse_stat_state_pgrp(stat: &str) -> Option<(char, i32)> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_odd_comm() {
        let stat = "4242 (nginx: a) b) S 1 4242 4242 0 -1 4194624 98 0 0 0";
        assert_eq!(parse_stat_state_pgrp(stat), Some(('S', 4242)));
        assert_eq!(parse_stat_state_pgrp("12 (z) Z 1 7 7"), Some(('Z', 7)));
        assert_eq!(parse_stat_state_pgrp("garbage"), None);
    }

    #[test]
    fn own_group_is_seen() {
        // SAFETY: no preconditions.
        let (pid, pgid) = unsafe { (libc::getpid(), libc::getpgrp()) };
        assert!(live_group_members(pgid).contains(&(pid as u32)));
    }
}
