//! BENCHMARKS.md: the machine, the results table, the evidence, the method and the
//! round-by-round figures.

use std::{fmt::Write as _, fs, process::Command, time::Instant};

use super::{
    host::parse_status_field,
    kernel_cost::{BLOCKS, PAUSED_PINGPONGS},
    load::WrkResult,
    memory::MemoryResult,
    pipeline::PipelineResult,
    rounds::Phase,
    stats::{diffs, fmt_opt, ratios, Spread},
    BenchArgs,
};
use crate::util::{self, probe};

/// One row of the results table.
struct Row {
    figure: String,
    /// The figure before the hot-path redesign (the performance issue's "now" column).
    before: &'static str,
    result: String,
    goal: String,
    verdict: &'static str,
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    }
}

/// The machine and tools the figures were measured with.
pub fn machine() -> Vec<(String, String)> {
    let kernel = probe(Command::new("uname").arg("-r")).unwrap_or_default();
    let nproc = probe(&mut Command::new("nproc")).unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_status_field(&s, "MemTotal"))
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let date = probe(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let tool = |cmd: &mut Command| {
        probe(cmd)
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "?".to_owned())
    };
    let nginx = Command::new("nginx")
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default();
    let wrk = Command::new("wrk")
        .arg("-v")
        .output()
        .ok()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default();
    vec![
        ("date".into(), date.trim().to_owned()),
        ("kernel (uname -r)".into(), kernel.trim().to_owned()),
        ("CPUs (nproc)".into(), nproc.trim().to_owned()),
        ("CPU model".into(), cpu),
        ("memory".into(), mem),
        (
            "load average at start".into(),
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("rustc".into(), tool(Command::new("rustc").arg("-V"))),
        ("nginx".into(), nginx),
        ("wrk".into(), wrk),
    ]
}

fn short_pct(r: f64) -> String {
    format!("{:+.1}%", (r - 1.0) * 100.0)
}

fn col<T: Copy>(v: &[WrkResult], f: impl Fn(&WrkResult) -> T) -> Vec<T> {
    v.iter().map(f).collect()
}

/// BENCHMARKS.md: the figures against their goals, how they were measured, and round by round.
pub fn report(
    a: &BenchArgs,
    machine: &[(String, String)],
    pipeline: Option<&PipelineResult>,
    with: &Phase,
    without: &Phase,
    mem: Option<&MemoryResult>,
    started: Instant,
) -> String {
    let mut rows = Vec::new();

    // (a)
    let rps_w = col(&with.wrk, |w| w.rps);
    let rps_wo = col(&without.wrk, |w| w.rps);
    let p50_w = col(&with.wrk, |w| w.p50_us);
    let p50_wo = col(&without.wrk, |w| w.p50_us);
    let p99_w = col(&with.wrk, |w| w.p99_us);
    let p99_wo = col(&without.wrk, |w| w.p99_us);
    let rps_ratio = Spread::of(&ratios(&rps_w, &rps_wo));
    let p50_ratio = Spread::of(&ratios(&p50_w, &p50_wo));
    let p99_ratio = Spread::of(&ratios(&p99_w, &p99_wo));
    rows.push(Row {
        figure: "Throughput at saturation, with/without agent (nginx, wrk -t1 -c32)".into(),
        result: format!(
            "{}× [{} → {} req/s]",
            fmt_opt(rps_ratio, 3, ""),
            fmt_opt(Spread::of(&rps_wo), 0, ""),
            fmt_opt(Spread::of(&rps_w), 0, "")
        ),
        before: "0.37–0.49×",
        goal: "≥ 0.90×".into(),
        verdict: verdict(rps_ratio.map(|s| s.median >= 0.90)),
    });
    rows.push(Row {
        figure: "p50 latency at saturation, with/without".into(),
        result: format!(
            "{}× [{} → {} µs]",
            fmt_opt(p50_ratio, 3, ""),
            fmt_opt(Spread::of(&p50_wo), 0, ""),
            fmt_opt(Spread::of(&p50_w), 0, "")
        ),
        before: "",
        goal: "(informational)".into(),
        verdict: "n/a",
    });
    rows.push(Row {
        figure: "p99 latency at saturation, with/without".into(),
        result: format!(
            "{}× [{} → {} µs]",
            fmt_opt(p99_ratio, 3, ""),
            fmt_opt(Spread::of(&p99_wo), 0, ""),
            fmt_opt(Spread::of(&p99_w), 0, "")
        ),
        before: "4.8–5.3×",
        goal: "(informational; the target ≤ 1.05× is at a fixed rate)".into(),
        verdict: "n/a",
    });
    // (b)
    let fixed_p50_ratio = Spread::of(&ratios(&with.fixed_p50_us, &without.fixed_p50_us));
    let fixed_p99_ratio = Spread::of(&ratios(&with.fixed_p99_us, &without.fixed_p99_us));
    rows.push(Row {
        figure: format!(
            "p99 latency at a fixed {} req/s, with/without (each request timed from when it was due)",
            a.rate
        ),
        result: format!(
            "{}× [{} → {} µs]",
            fmt_opt(fixed_p99_ratio, 3, ""),
            fmt_opt(Spread::of(&without.fixed_p99_us), 0, ""),
            fmt_opt(Spread::of(&with.fixed_p99_us), 0, "")
        ),
        before: "2.0–2.4×",
        goal: "≤ 1.05×".into(),
        verdict: verdict(fixed_p99_ratio.map(|s| s.median <= 1.05)),
    });
    rows.push(Row {
        figure: format!("p50 latency at a fixed {} req/s, with/without", a.rate),
        result: format!(
            "{}× [{} → {} µs]",
            fmt_opt(fixed_p50_ratio, 3, ""),
            fmt_opt(Spread::of(&without.fixed_p50_us), 0, ""),
            fmt_opt(Spread::of(&with.fixed_p50_us), 0, "")
        ),
        before: "",
        goal: "(informational)".into(),
        verdict: "n/a",
    });
    let per10k: Vec<f64> = with
        .agent_mc
        .iter()
        .zip(&with.fixed_rps)
        .filter(|(_, r)| **r > 0.0)
        .map(|(mc, r)| mc * 10_000.0 / r)
        .collect();
    let per10k_s = Spread::of(&per10k);
    rows.push(Row {
        figure: format!(
            "Agent CPU at a fixed rate (target {} req/s; achieved {}), per 10,000 req/s",
            a.rate,
            fmt_opt(Spread::of(&with.fixed_rps), 0, "")
        ),
        result: format!(
            "{} [raw {}]",
            fmt_opt(per10k_s, 0, " millicores"),
            fmt_opt(Spread::of(&with.agent_mc), 0, " mc")
        ),
        before: "231–342 mc",
        goal: "≤ 50 millicores".into(),
        verdict: verdict(per10k_s.map(|s| s.median <= 50.0)),
    });
    let nginx_delta = Spread::of(&diffs(&with.nginx_mc, &without.nginx_mc));
    rows.push(Row {
        figure:
            "nginx worker CPU at that rate, with − without (kernel-side cost in the traced process)"
                .into(),
        result: format!(
            "{} [{} → {} mc]",
            fmt_opt(nginx_delta, 0, " millicores"),
            fmt_opt(Spread::of(&without.nginx_mc), 0, ""),
            fmt_opt(Spread::of(&with.nginx_mc), 0, "")
        ),
        before: "+57–86 mc",
        goal: "≤ +25 millicores".into(),
        verdict: verdict(nginx_delta.map(|s| s.median <= 25.0)),
    });
    let rss_s = Spread::of(&with.agent_rss);
    rows.push(Row {
        figure: "Agent RSS during the fixed-rate run".into(),
        result: fmt_opt(rss_s, 1, " MiB"),
        before: "63.7 MiB",
        goal: "≤ 48 MiB".into(),
        verdict: verdict(rss_s.map(|s| s.max <= 48.0)),
    });
    rows.push(Row {
        figure: "Agent wake-ups per second at the fixed rate (voluntary context switches)".into(),
        before: "",
        result: format!(
            "{} [during the saturation run: {}]",
            fmt_opt(Spread::of(&with.agent_wakeups), 0, "/s"),
            fmt_opt(Spread::of(&with.agent_wakeups_wrk), 0, "/s")
        ),
        goal: "(informational)".into(),
        verdict: "n/a",
    });
    rows.push(Row {
        figure: "Agent CPU during the saturation run (raw)".into(),
        before: "",
        result: fmt_opt(Spread::of(&with.agent_mc_wrk), 0, " millicores"),
        goal: "(informational)".into(),
        verdict: "n/a",
    });
    // (c)
    let sock_d = Spread::of(&diffs(&with.sock_ns, &without.sock_ns));
    rows.push(Row {
        figure:
            "Kernel cost per captured message (loopback TCP 100-byte write/read, added ns per op)"
                .into(),
        result: format!(
            "{} [{} → {} ns/op]",
            fmt_opt(sock_d, 0, " ns"),
            fmt_opt(Spread::of(&without.sock_ns), 0, ""),
            fmt_opt(Spread::of(&with.sock_ns), 0, "")
        ),
        before: "~1.5 µs",
        goal: "≤ 300 ns".into(),
        verdict: verdict(sock_d.map(|s| s.median <= 300.0)),
    });
    let paused_d = Spread::of(&diffs(&with.sock_paused_ns, &without.sock_ns));
    rows.push(Row {
        figure: "… of which the kernel programs alone (same loop, agent stopped: copy + ring buffer, no wake-up, no parsing)".into(),
        result: format!(
            "{} [{} ns/op]",
            fmt_opt(paused_d, 0, " ns"),
            fmt_opt(Spread::of(&with.sock_paused_ns), 0, "")
        ),
        before: "~1.4 µs",
        goal: "≤ 300 ns".into(),
        verdict: verdict(paused_d.map(|s| s.median <= 300.0)),
    });
    for (name, w, wo) in [
        ("pipe", &with.pipe_ns, &without.pipe_ns),
        ("file (tmpfs)", &with.file_ns, &without.file_ns),
    ] {
        let d = Spread::of(&diffs(w, wo));
        rows.push(Row {
            figure: format!(
                "Cost added to a {name} write/read (not a socket: never reaches the socket tracepoints)"
            ),
            result: format!(
                "{} [{} → {} ns/op]",
                fmt_opt(d, 0, " ns"),
                fmt_opt(Spread::of(wo), 0, ""),
                fmt_opt(Spread::of(w), 0, "")
            ),
            before: "300–450 ns",
            goal: "near zero (≤ 50 ns)".into(),
            verdict: verdict(d.map(|s| s.median <= 50.0)),
        });
    }
    // (d)
    if let Some(p) = pipeline {
        let [lo, est, hi] = p.time;
        let mps = p.messages as f64 / est;
        rows.push(Row {
            figure: "Userspace pipeline, one core (criterion; decode → reassembly → trace context → findings)".into(),
            result: format!(
                "{:.2} M messages/s ({:.2}–{:.2}), {:.0} MiB/s ({:.0}–{:.0})",
                mps / 1e6,
                p.messages as f64 / hi / 1e6,
                p.messages as f64 / lo / 1e6,
                p.bytes as f64 / est / 1048576.0,
                p.bytes as f64 / hi / 1048576.0,
                p.bytes as f64 / lo / 1048576.0
            ),
            before: "0.53 M messages/s",
            goal: "≥ 2,000,000 messages/s".into(),
            verdict: verdict(Some(mps >= 2e6)),
        });
    }
    // (e)
    if let Some(m) = mem {
        rows.push(Row {
            figure: format!(
                "Agent RSS with {} idle connections open (both ends traced)",
                m.idle_opened
            ),
            result: format!(
                "{:.1} MiB (idle agent {:.1} MiB)",
                m.rss_idle_conns, m.rss_idle_agent
            ),
            before: "268 MiB",
            goal: "≤ 128 MiB".into(),
            verdict: verdict(Some(m.rss_idle_conns <= 128.0)),
        });
        rows.push(Row {
            figure: format!(
                "Agent RSS after {} short connections ({:.0} s)",
                m.short_done, m.short_secs
            ),
            result: format!(
                "{:.1} MiB after, {:.1} MiB max during, high-water {:.1} MiB",
                m.rss_after_short, m.rss_short_max, m.hwm
            ),
            before: "535 MiB (after 400k)",
            goal: "within 10 % of the idle agent, 10 s after".into(),
            verdict: verdict(Some(m.rss_after_short <= m.rss_idle_agent * 1.1)),
        });
    }

    let mut md = String::new();
    let _ = writeln!(md, "# traceid benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` (xtask/src/bench/); rerun it after each capability lands.\n\
         Loopback only; each cost is measured side by side in one run: {} rounds with and without \
         the agent, alternating which goes first. Figures are the median of the rounds with the \
         spread (min–max) in parentheses; ratios and differences are taken round by round \
         (each with-round against the without-round next to it).\n",
        a.rounds
    );
    let _ = writeln!(md, "## Machine\n");
    for (k, v) in machine {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(
        md,
        "- noise: a shared 2-core machine; other engineers' builds may have run during the \
         measurement. Treat small differences (a few %) as within noise; the spread says how much.\n"
    );
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "| figure | before the redesign | result: median (min–max) | goal | |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            r.figure, r.before, r.result, r.goal, r.verdict
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "## Evidence that the agent saw the traffic\n");
    for (i, ((seen, sent), lost)) in with.seen.iter().zip(&with.sent).zip(&with.lost).enumerate() {
        let _ = writeln!(
            md,
            "- round {}: agent reported {seen} requests; the bench sent ~{sent}, each seen at both \
             ends (client and server both run here), so ~{} are expected (more: other traffic \
             on the host); losses {lost}",
            i + 1,
            2 * sent
        );
    }
    if let Some(m) = mem {
        let _ = writeln!(
            md,
            "- memory run: agent reported {} requests for {} short connections (both ends); \
             {} connection errors; losses {}",
            m.requests_seen, m.short_done, m.short_errors, m.lost
        );
        let _ = writeln!(
            md,
            "- idle connections: {} opened in {:.1} s; agent RSS after closing them {:.1} MiB",
            m.idle_opened, m.idle_secs, m.rss_after_idle_close
        );
    }
    if let Some(p) = pipeline {
        let _ = writeln!(md, "- pipeline benchmark: `{}`", p.stream_line);
    }
    let _ = writeln!(md);
    let _ = write!(
        md,
        "## Method\n\n\
         - The agent under test is the release `traceid diagnose --json --duration 1h` (all \
         tracepoints attached, every request parsed and aggregated, its default `--cpu-policy`; \
         stopped with SIGINT, its report gives the requests it saw). A fresh agent is started \
         for each with-round.\n\
         - Request overhead: nginx ({ng}) on 127.0.0.1, one worker, `return 200 \"ok\"`; \
         `wrk -t1 -c32 -d{secs}s --latency`; requests/s and the 50%/99% latencies wrk prints. \
         nginx is pinned to CPU 0 and wrk to CPU 1 (the same placement every run); the agent \
         is not pinned and takes its CPU from both. Wake-ups = the agent's voluntary context \
         switches per second.\n\
         - Fixed rate: {rate} req/s from 16 keep-alive Rust clients in the bench process, each on a \
         fixed schedule (a late request goes at once); a W3C traceparent on every request. \
         Latency: each request from the time it was due to the end of its response (so a \
         client held up by one slow response counts the wait of every request it sends late: \
         no coordinated omission), all requests of the window in one log-linear histogram \
         (buckets 1/128 of their value wide), p50 and p99 of it. \
         CPU = utime+stime from /proc/PID/stat over the {secs} s window, in millicores \
         (1000 = one core busy); normalised to 10,000 req/s by the achieved rate. RSS = VmRSS at \
         the end of the window. The nginx worker's CPU, with minus without, is the in-kernel \
         cost the eBPF programs add to the traced process.\n\
         - Kernel cost per event: one thread of the bench process, a loopback TCP connection \
         (TCP_NODELAY) with both ends in the thread: write 100 B, read 100 B, write 100 B back, \
         read it ({n} round trips in {blocks} blocks of {per_block}, each after 1000 warm-up \
         round trips; the fastest block counts, as other work on the machine only adds time; \
         each round trip is 4 captured messages; the messages \
         are a 100-byte HTTP request and response so the agent parses them). The loops run \
         in a thread pinned to CPU 0 and the agent is pinned to the other CPUs meanwhile \
         ({pin}), so the agent's userspace work does not take the core from the loop: ns per \
         op with minus without = the time the kernel programs add inside each syscall \
         (the socket tracepoints, socket lookup, copy into the ring buffer, wake-up). \
         With the agent, the socket loop runs once more ({paused} round trips) with the agent \
         stopped by SIGSTOP: the programs still copy every message into the ring buffer (it \
         holds them all) but no reader is woken and nothing is parsed, which isolates the \
         kernel programs' own cost. The same loop on a pipe and on \
         a tmpfs file (write, lseek, read, lseek; per traced op) shows the cost to fds that are \
         not sockets.\n\
         - Pipeline: criterion (`cargo bench -p traceid-user --bench pipeline`, one thread) \
         feeding a generated stream through `Engine::process`: keep-alive client→front→back \
         traffic seen from both ends, W3C/B3/X-Request-ID/missing/malformed context, \
         Content-Length, chunked and split bodies, connection churn, a few non-HTTP \
         connections. A message is one captured read or write; bytes are their payloads. \
         Spread = criterion's 95% confidence interval.\n\
         - Memory: {idle} idle loopback connections (both ends traced; held by pairs of helper processes of at most 15,000 connections each, one \
         listening port per pair, since a process may not open more than 20,000 fds here), agent VmRSS 3 s after; then up to \
         {short} short connections (connect, one request, the server answers and closes) from \
         4 client threads for at most {short_secs} s; VmRSS sampled every 250 ms, and 3 s \
         after; VmHWM is the agent's lifetime peak.\n\
         - Run time: {total}.\n",
        ng = machine
            .iter()
            .find(|(k, _)| k == "nginx")
            .map(|(_, v)| v.as_str())
            .unwrap_or(""),
        secs = a.secs,
        rate = a.rate,
        n = a.pingpongs,
        idle = a.idle_conns,
        short = a.short_conns,
        short_secs = a.short_secs,
        total = util::fmt_duration(started.elapsed()),
        paused = PAUSED_PINGPONGS.min(a.pingpongs),
        blocks = BLOCKS,
        per_block = (a.pingpongs / BLOCKS).max(1),
        pin = if with.pinned { "done in this run" } else { "not done in this run: one CPU, or taskset failed" },
    );
    let misses: Vec<&Row> = rows.iter().filter(|r| r.verdict == "MISSED").collect();
    let _ = writeln!(md, "\n## Closing note\n");
    let _ = writeln!(md, "Each target, its figure in this run, and its goal:\n");
    for r in rows.iter().filter(|r| r.verdict != "n/a") {
        let _ = writeln!(
            md,
            "- {}: **{}** — {} (goal {})",
            r.figure, r.verdict, r.result, r.goal
        );
    }
    let _ = writeln!(
        md,
        "\n{} of {} targets missed in this run.",
        misses.len(),
        rows.iter().filter(|r| r.verdict != "n/a").count()
    );
    let _ = writeln!(md, "\nRound-by-round figures (with / without):\n");
    for i in 0..with.wrk.len().min(without.wrk.len()) {
        let (w, wo) = (&with.wrk[i], &without.wrk[i]);
        let _ = writeln!(
            md,
            "- round {}: wrk {:.0} / {:.0} req/s ({}), p99 {:.0} / {:.0} µs; socket {:.0} (agent paused {:.0}) / {:.0} ns/op, \
             pipe {:.0} / {:.0}, file {:.0} / {:.0}; fixed rate p99 {:.0} / {:.0} µs (p50 {:.0} / {:.0}), \
             agent {:.0} mc, RSS {:.1} MiB",
            i + 1,
            w.rps,
            wo.rps,
            short_pct(w.rps / wo.rps),
            w.p99_us,
            wo.p99_us,
            with.sock_ns.get(i).copied().unwrap_or(f64::NAN),
            with.sock_paused_ns.get(i).copied().unwrap_or(f64::NAN),
            without.sock_ns.get(i).copied().unwrap_or(f64::NAN),
            with.pipe_ns.get(i).copied().unwrap_or(f64::NAN),
            without.pipe_ns.get(i).copied().unwrap_or(f64::NAN),
            with.file_ns.get(i).copied().unwrap_or(f64::NAN),
            without.file_ns.get(i).copied().unwrap_or(f64::NAN),
            with.fixed_p99_us.get(i).copied().unwrap_or(f64::NAN),
            without.fixed_p99_us.get(i).copied().unwrap_or(f64::NAN),
            with.fixed_p50_us.get(i).copied().unwrap_or(f64::NAN),
            without.fixed_p50_us.get(i).copied().unwrap_or(f64::NAN),
            with.agent_mc.get(i).copied().unwrap_or(f64::NAN),
            with.agent_rss.get(i).copied().unwrap_or(f64::NAN),
        );
        let _ = writeln!(
            md,
            "  - conditions: with: {}; without: {}",
            with.notes.get(i).map_or("?", String::as_str),
            without.notes.get(i).map_or("?", String::as_str)
        );
    }
    md
}
