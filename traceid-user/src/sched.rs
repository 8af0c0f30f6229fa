//! The agent's CPU scheduling: out of the way of the services it watches, never starved.
//!
//! The agent drains its ring buffer in bursts (every 100 ms, or when a quarter of the ring is
//! waiting). Under the default policy a burst that wakes on a busy CPU shares it with the
//! service running there for a whole scheduler slice, and every request that arrives meanwhile
//! waits: measured with `perf sched`, the nginx worker and its clients waited behind the agent
//! for up to 5–8 ms, which is the p99. Under `SCHED_IDLE` the agent runs only on CPU time
//! nobody else wants, and any service thread that wakes takes the CPU back at once.
//!
//! A host whose CPUs are busy for good would starve an idle-policy agent and its ring would
//! overflow, losing capture: a watchdog thread of normal policy checks that the drain loop
//! keeps beating and lifts it to the normal policy when it stops; the loop goes back to idle
//! once it has kept up for a while (twice as long after each lift, so a host that stays busy
//! keeps it at normal).

use std::{
    fmt,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

/// The scheduling policy of the agent's drain loop (`--cpu-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuPolicy {
    /// `SCHED_IDLE` while the agent keeps up, lifted to normal when it is starved. Kinder to
    /// the latency of the services watched, but on a host saturated for long its ring buffer
    /// overflows before the lift helps (measured: nginx at saturation lost 1.1 M records in
    /// 5 s): an opt-in for hosts with idle CPU.
    Idle,
    /// `SCHED_BATCH`: a fair share, but its wake-ups do not preempt the running thread.
    Batch,
    /// `SCHED_OTHER`, as started: a fair share of the CPU, so the ring buffer keeps draining
    /// under any load (the default: no capture is traded for latency).
    #[default]
    Normal,
}

impl CpuPolicy {
    fn linux_policy(self) -> libc::c_int {
        match self {
            CpuPolicy::Idle => libc::SCHED_IDLE,
            CpuPolicy::Batch => libc::SCHED_BATCH,
            CpuPolicy::Normal => libc::SCHED_OTHER,
        }
    }
}

impl fmt::Display for CpuPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CpuPolicy::Idle => "idle",
            CpuPolicy::Batch => "batch",
            CpuPolicy::Normal => "normal",
        })
    }
}

impl FromStr for CpuPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "idle" => Ok(CpuPolicy::Idle),
            "batch" => Ok(CpuPolicy::Batch),
            "normal" => Ok(CpuPolicy::Normal),
            _ => Err(format!("'{s}' is not a CPU policy (idle, batch or normal)")),
        }
    }
}

#[derive(thiserror::Error, Debug)]
pub enum SchedError {
    #[error("setting the {policy} CPU policy: {source}")]
    Set {
        policy: CpuPolicy,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the idle CPU policy needs CAP_SYS_NICE (to be lifted to normal when the host starves \
         the agent): running at the normal policy"
    )]
    CannotLift,
    #[error("starting the CPU watchdog thread: {0}")]
    Watchdog(#[source] std::io::Error),
}

/// Sets the policy of thread `tid` (0: the calling thread).
fn set_policy(tid: libc::pid_t, policy: CpuPolicy) -> Result<(), SchedError> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call; on Linux the pid
    // argument names a thread.
    if unsafe { libc::sched_setscheduler(tid, policy.linux_policy(), &param) } != 0 {
        return Err(SchedError::Set {
            policy,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Linux's capability number of CAP_SYS_NICE.
const CAP_SYS_NICE: u32 = 23;

/// Whether this process may move a thread from `SCHED_IDLE` back to normal: with
/// CAP_SYS_NICE, or an RLIMIT_NICE that allows nice 0.
fn can_leave_idle() -> bool {
    let capable = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| has_effective_cap(&s, CAP_SYS_NICE));
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out pointer.
    let nice_allowed =
        unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut limit) } == 0 && limit.rlim_cur >= 20;
    capable || nice_allowed
}

/// Whether the `CapEff:` mask of a /proc/PID/status text holds capability `cap`.
fn has_effective_cap(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << cap) != 0)
}

fn current_tid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// When the watchdog lifts the loop and when the loop goes back to idle.
#[derive(Debug, Clone, Copy)]
pub struct GuardTiming {
    /// How often the watchdog looks.
    pub check_every: Duration,
    /// A loop that has not beaten for this long is starved (it beats at least every poll,
    /// 100 ms, and every few thousand records while draining).
    pub starved_after: Duration,
    /// How long the loop must keep up after its first lift before it goes back to idle;
    /// doubled after each lift, up to `max_hold`.
    pub first_hold: Duration,
    pub max_hold: Duration,
}

impl Default for GuardTiming {
    fn default() -> Self {
        GuardTiming {
            check_every: Duration::from_millis(50),
            starved_after: Duration::from_millis(200),
            first_hold: Duration::from_secs(10),
            max_hold: Duration::from_secs(600),
        }
    }
}

/// State shared by the drain loop and its watchdog.
struct Shared {
    origin: Instant,
    /// When the loop last beat, in ns since `origin`.
    last_beat_ns: AtomicU64,
    /// Set by the watchdog once it has lifted the loop to normal; cleared by the loop once it
    /// has gone back to idle (each side only makes its own transition).
    lifted: AtomicBool,
    lifts: AtomicU64,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            origin: Instant::now(),
            last_beat_ns: AtomicU64::new(0),
            lifted: AtomicBool::new(false),
            lifts: AtomicU64::new(0),
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The drain loop's side: sets the policy on the calling thread, beats, and goes back to
/// idle after a lift once it has kept up. Dropping it stops the watchdog.
pub struct CpuGuard {
    policy: CpuPolicy,
    shared: Arc<Shared>,
    timing: GuardTiming,
    /// Since when the loop has kept up, while lifted.
    keeping_up_since: Option<Instant>,
    /// Ends the watchdog when dropped.
    _stop: Option<mpsc::Sender<()>>,
}

impl CpuGuard {
    /// Puts the calling thread under `policy`; for `Idle`, also starts the watchdog that lifts
    /// it when starved. On error the thread's policy is unchanged (for `CannotLift`: idle was
    /// asked, but could not be left again without CAP_SYS_NICE).
    pub fn start(policy: CpuPolicy, timing: GuardTiming) -> Result<CpuGuard, SchedError> {
        let mut guard = CpuGuard {
            policy,
            shared: Shared::new(),
            timing,
            keeping_up_since: None,
            _stop: None,
        };
        if policy != CpuPolicy::Idle {
            set_policy(0, policy)?;
            return Ok(guard);
        }
        // Leaving SCHED_IDLE needs CAP_SYS_NICE (or RLIMIT_NICE at 20): without it the loop
        // could never be lifted, so it is not put there.
        if !can_leave_idle() {
            return Err(SchedError::CannotLift);
        }
        // The watchdog first: a thread inherits the policy of the one that creates it.
        let (stop, stopped) = mpsc::channel::<()>();
        let tid = current_tid();
        let shared = Arc::clone(&guard.shared);
        guard.alive();
        thread::Builder::new()
            .name("cpu-watchdog".into())
            .spawn(move || watchdog(tid, &shared, timing, &stopped))
            .map_err(SchedError::Watchdog)?;
        guard._stop = Some(stop);
        set_policy(0, CpuPolicy::Idle)?;
        Ok(guard)
    }

    /// A guard that changes nothing (the thread keeps the policy it has).
    pub fn inactive() -> CpuGuard {
        CpuGuard {
            policy: CpuPolicy::Normal,
            shared: Shared::new(),
            timing: GuardTiming::default(),
            keeping_up_since: None,
            _stop: None,
        }
    }

    /// The policy asked for and in force.
    pub fn policy(&self) -> CpuPolicy {
        self.policy
    }

    /// How many times the watchdog lifted the loop to the normal policy.
    pub fn lifts(&self) -> u64 {
        self.shared.lifts.load(Ordering::Relaxed)
    }

    /// The loop is alive (called while it drains, too: a long drain is not a starved loop).
    pub fn alive(&self) {
        self.shared
            .last_beat_ns
            .store(self.shared.now_ns(), Ordering::Relaxed);
    }

    /// The loop is alive and has polled; `kept_up` when the poll emptied the ring buffer.
    pub fn beat(&mut self, kept_up: bool) {
        self.alive();
        if !self.shared.lifted.load(Ordering::Acquire) {
            return;
        }
        if !kept_up {
            self.keeping_up_since = None;
            return;
        }
        let since = *self.keeping_up_since.get_or_insert_with(Instant::now);
        let doublings = self.lifts().saturating_sub(1).min(16) as u32;
        let hold = self
            .timing
            .first_hold
            .saturating_mul(1 << doublings)
            .min(self.timing.max_hold);
        if since.elapsed() >= hold && set_policy(0, CpuPolicy::Idle).is_ok() {
            self.keeping_up_since = None;
            self.shared.lifted.store(false, Ordering::Release);
        }
    }
}

/// Lifts thread `tid` to the normal policy whenever it stops beating while idle.
fn watchdog(tid: libc::pid_t, shared: &Shared, timing: GuardTiming, stopped: &mpsc::Receiver<()>) {
    let starved_ns = u64::try_from(timing.starved_after.as_nanos()).unwrap_or(u64::MAX);
    // Until the loop's guard is dropped (the sender goes and recv_timeout says Disconnected).
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(timing.check_every) {
        if shared.lifted.load(Ordering::Acquire) {
            continue;
        }
        let silent_ns = shared
            .now_ns()
            .saturating_sub(shared.last_beat_ns.load(Ordering::Relaxed));
        if silent_ns >= starved_ns && set_policy(tid, CpuPolicy::Normal).is_ok() {
            shared.lifts.fetch_add(1, Ordering::Relaxed);
            shared.lifted.store(true, Ordering::Release);
            tracing::info!(
                "the agent was starved of CPU for {} ms under the idle policy: lifted to normal",
                silent_ns / 1_000_000
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: no preconditions; returns -1 for a thread that is gone.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// The tid of this process's `cpu-watchdog` thread (one test only starts one); waits for
    /// the thread to name itself, which it does once it runs.
    fn watchdog_tid() -> libc::pid_t {
        let named = || {
            std::fs::read_dir("/proc/self/task")
                .ok()?
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "cpu-watchdog")
                })
                .find_map(|t| t.file_name().to_str()?.parse().ok())
        };
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            match named() {
                Some(tid) => return tid,
                None if Instant::now() < until => thread::sleep(Duration::from_millis(1)),
                None => panic!("no cpu-watchdog thread"),
            }
        }
    }

    fn fast() -> GuardTiming {
        GuardTiming {
            check_every: Duration::from_millis(5),
            starved_after: Duration::from_millis(60),
            first_hold: Duration::from_millis(100),
            max_hold: Duration::from_secs(1),
        }
    }

    #[test]
    fn policies_parse_and_print() {
        for p in [CpuPolicy::Idle, CpuPolicy::Batch, CpuPolicy::Normal] {
            assert_eq!(p.to_string().parse::<CpuPolicy>(), Ok(p));
        }
        assert!("realtime".parse::<CpuPolicy>().is_err());
        assert_eq!(CpuPolicy::default(), CpuPolicy::Normal);
    }

    #[test]
    fn cap_sys_nice_is_read_from_the_effective_set() {
        // Root's full set, and deploy/kubernetes/daemonset.yaml's (BPF, PERFMON, NET_ADMIN,
        // SYS_PTRACE, DAC_READ_SEARCH; no SYS_NICE).
        let root = "Name:\ttraceid\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                    CapEff:\t000001ffffffffff\n";
        let reduced = "CapPrm:\t000001ffffffffff\nCapEff:\t000000c000081004\n";
        assert!(has_effective_cap(root, CAP_SYS_NICE));
        assert!(!has_effective_cap(reduced, CAP_SYS_NICE));
        assert!(has_effective_cap(reduced, 2), "CAP_DAC_READ_SEARCH");
        assert!(!has_effective_cap("CapEff:\tnot hex\n", CAP_SYS_NICE));
    }

    #[test]
    fn batch_and_normal_are_set_on_the_calling_thread_only() {
        let main_policy = policy_of(0);
        thread::spawn(|| {
            let guard = CpuGuard::start(CpuPolicy::Batch, fast()).expect("batch");
            assert_eq!(guard.policy(), CpuPolicy::Batch);
            assert_eq!(policy_of(0), libc::SCHED_BATCH);
            CpuGuard::start(CpuPolicy::Normal, fast()).expect("normal");
            assert_eq!(policy_of(0), libc::SCHED_OTHER);
        })
        .join()
        .expect("policy thread");
        assert_eq!(policy_of(0), main_policy);
    }

    #[test]
    fn a_starved_idle_loop_is_lifted_and_goes_back_to_idle_once_it_keeps_up() {
        thread::spawn(|| {
            let mut guard = match CpuGuard::start(CpuPolicy::Idle, fast()) {
                Ok(g) => g,
                // Without CAP_SYS_NICE the agent stays at normal and says so.
                Err(SchedError::CannotLift) => {
                    assert_eq!(policy_of(0), libc::SCHED_OTHER);
                    return;
                }
                Err(e) => panic!("{e}"),
            };
            assert_eq!(guard.policy(), CpuPolicy::Idle);
            assert_eq!(policy_of(0), libc::SCHED_IDLE);
            assert_eq!(
                policy_of(watchdog_tid()),
                libc::SCHED_OTHER,
                "the watchdog must not be starved with the loop"
            );
            // Beating in time: left idle. (An idle thread on a busy machine may itself be
            // starved between two beats; then a lift is right, and only then.)
            let mut last = Instant::now();
            let mut longest_gap = Duration::ZERO;
            for _ in 0..20 {
                guard.beat(true);
                longest_gap = longest_gap.max(last.elapsed());
                last = Instant::now();
                thread::sleep(Duration::from_millis(5));
            }
            if longest_gap >= fast().starved_after {
                eprintln!(
                    "this thread was starved for {longest_gap:?} while beating, and lifted {} \
                     time(s) for it, rightly; the rest needs a less busy machine",
                    guard.lifts()
                );
                return;
            }
            assert_eq!((policy_of(0), guard.lifts()), (libc::SCHED_IDLE, 0));
            // Silent for longer than `starved_after`: lifted (within a bound that allows for
            // a busy machine delaying the watchdog; the policy, not the time, is asserted).
            let until = Instant::now() + Duration::from_secs(5);
            while guard.lifts() == 0 && Instant::now() < until {
                thread::sleep(Duration::from_millis(10));
            }
            assert_eq!((policy_of(0), guard.lifts()), (libc::SCHED_OTHER, 1));
            // Behind (the ring not emptied): stays lifted past the hold.
            for _ in 0..30 {
                guard.beat(false);
                thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(policy_of(0), libc::SCHED_OTHER);
            // Keeping up for the hold: back to idle.
            let until = Instant::now() + Duration::from_secs(5);
            let mut back_to_idle = false;
            while Instant::now() < until && !back_to_idle {
                guard.beat(true);
                back_to_idle = policy_of(0) == libc::SCHED_IDLE;
                thread::sleep(Duration::from_millis(5));
            }
            assert!(back_to_idle, "still {} after keeping up", policy_of(0));
        })
        .join()
        .expect("guard thread");
    }
}
