//! The userspace pipeline: criterion's benchmark of traceid-user (`--bench pipeline`), run
//! and read.

use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::util::{cargo, repo_root};

/// A criterion duration like `1.2345 ms` in seconds.
fn parse_criterion_time(num: &str, unit: &str) -> Option<f64> {
    let v: f64 = num.parse().ok()?;
    let mult = match unit {
        "ps" => 1e-12,
        "ns" => 1e-9,
        "µs" | "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => return None,
    };
    Some(v * mult)
}

/// What the pipeline benchmark printed: stream size and criterion's time per pass.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineResult {
    pub messages: u64,
    pub bytes: u64,
    pub requests: u64,
    /// Seconds per pass: criterion's lower bound, estimate, upper bound.
    pub time: [f64; 3],
    pub stream_line: String,
}

/// Runs the pipeline benchmark (echoing its output) and reads its figures.
pub fn run() -> Result<PipelineResult> {
    let out = cargo(&repo_root())
        .args(["bench", "-p", "traceid-user", "--bench", "pipeline"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running the pipeline benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    if !out.status.success() {
        bail!("the pipeline benchmark failed ({})", out.status);
    }
    parse_pipeline(&text)
        .context("could not read the pipeline benchmark's output (stream line, time)")
}

pub fn parse_pipeline(out: &str) -> Option<PipelineResult> {
    let line = out.lines().find(|l| l.starts_with("pipeline stream:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let num_before = |what: &str| -> Option<u64> {
        let i = words.iter().position(|w| w.trim_end_matches(',') == what)?;
        words.get(i.checked_sub(1)?)?.parse().ok()
    };
    let messages = num_before("messages")?;
    let bytes = num_before("bytes")?;
    let requests = num_before("requests").unwrap_or(0);
    let tline = out
        .lines()
        .find(|l| l.contains("time:") && l.contains('['))?;
    let inner = &tline[tline.find('[')? + 1..tline.find(']')?];
    let t: Vec<&str> = inner.split_whitespace().collect();
    if t.len() != 6 {
        return None;
    }
    let time = [
        parse_criterion_time(t[0], t[1])?,
        parse_criterion_time(t[2], t[3])?,
        parse_criterion_time(t[4], t[5])?,
    ];
    Some(PipelineResult {
        messages,
        bytes,
        requests,
        time,
        stream_line: line.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_output() {
        let out = "pipeline stream: 100000 messages, 50000000 bytes, 110000 records, 20000 requests (missing 5)\n\
Benchmarking pipeline/http1_mixed\npipeline/http1_mixed    time:   [45.120 ms 46.000 ms 47.500 ms]\n\
                        thrpt:  [2.1 Melem/s 2.17 Melem/s 2.2 Melem/s]\n";
        let p = parse_pipeline(out).unwrap();
        assert_eq!((p.messages, p.bytes, p.requests), (100000, 50000000, 20000));
        assert!((p.time[1] - 0.046).abs() < 1e-12);
        let us = "pipeline stream: 1 messages, 2 bytes, 3 records, 4 requests ()\nx time:   [1.0 µs 2.0 µs 3.0 µs]\n";
        assert_eq!(parse_pipeline(us).unwrap().time[1], 2e-6);
    }
}
