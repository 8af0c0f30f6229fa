//! The host: CPU time and memory of processes from /proc, CPU placement, signals, and the
//! other agents whose programs would trace the bench's traffic too.

use std::{
    fs,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::util::probe;

fn clk_tck() -> f64 {
    probe(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&stat)
}

/// utime + stime from a /proc/PID/stat line (fields 14 and 15; comm may hold spaces).
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // after ')' : field 3 (state) is f[0]; utime is field 14 → f[11], stime f[12].
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM), in MiB.
pub fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_field(&s, field).map(|kb| kb as f64 / 1024.0)
}

/// The number of a `Field: N [kB]` line of /proc/PID/status or /proc/meminfo.
pub fn parse_status_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Pids of other `traceid` agents on this host (other engineers' runs, integration tests):
/// their programs trace our traffic too, so a round with one running is noisy.
pub fn other_agents(mine: Option<u32>) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != mine)
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "traceid")
        })
        .collect()
}

/// Waits (at most `max`) until no other agent runs; returns a note when it gave up.
pub fn wait_quiet(max: Duration) -> Option<String> {
    let deadline = Instant::now() + max;
    loop {
        let others = other_agents(None);
        if others.is_empty() {
            return None;
        }
        if Instant::now() >= deadline {
            return Some(format!(
                "{} other traceid agent(s) running (pids {:?})",
                others.len(),
                others
            ));
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Voluntary context switches of every thread of a process: each is a sleep the thread was
/// woken from (a wake-up that may preempt whatever runs on the CPU it lands on).
fn wakeups(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
            .filter_map(|s| parse_status_field(&s, "voluntary_ctxt_switches"))
            .sum(),
    )
}

/// CPU (and wake-ups) of a set of processes over an interval.
pub struct CpuMeter {
    pids: Vec<u32>,
    start: Instant,
    ticks: u64,
    wakeups: u64,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            start: Instant::now(),
            ticks: pids.iter().filter_map(|p| cpu_ticks(*p)).sum(),
            wakeups: pids.iter().filter_map(|p| wakeups(*p)).sum(),
        }
    }
    /// CPU time since the start, in millicores (1000 = one core busy).
    pub fn millicores(&self) -> f64 {
        let ticks: u64 = self.pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
        let secs = self.start.elapsed().as_secs_f64();
        ticks.saturating_sub(self.ticks) as f64 / clk_tck() / secs * 1000.0
    }
    /// Wake-ups per second since the start.
    pub fn wakeups_per_s(&self) -> f64 {
        let now: u64 = self.pids.iter().filter_map(|p| wakeups(*p)).sum();
        now.saturating_sub(self.wakeups) as f64 / self.start.elapsed().as_secs_f64()
    }
}

pub fn nproc() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread to `cpu` (taskset(1) on our own tid: std has no affinity call).
pub fn pin_this_thread(cpu: usize) -> bool {
    let Ok(link) = fs::read_link("/proc/thread-self") else {
        return false;
    };
    let Some(tid) = link.file_name().and_then(|t| t.to_str()).map(str::to_owned) else {
        return false;
    };
    probe(Command::new("taskset").args(["-pc", &cpu.to_string(), &tid])).is_some()
}

/// Pins every thread of `pid` to `cpus` (a taskset list like `1` or `0-1`).
pub fn pin_process(pid: u32, cpus: &str) -> bool {
    probe(Command::new("taskset").args(["-apc", cpus, &pid.to_string()])).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let stat = "1234 (nginx: worker) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        let status = "Name:\ttraceid\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_field(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_field(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_field(status, "VmSwap"), None);
        let status = "voluntary_ctxt_switches:\t812\nnonvoluntary_ctxt_switches:\t31\n";
        assert_eq!(
            parse_status_field(status, "voluntary_ctxt_switches"),
            Some(812)
        );
    }
}
