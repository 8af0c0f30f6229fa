//! The agent under test: the release `traceid diagnose`, started and stopped per round, and
//! the figures its report gives.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::host::signal;

/// The agent (`traceid diagnose`) running until stopped.
pub struct Agent {
    child: Child,
    stderr: Arc<std::sync::Mutex<String>>,
}

/// What a stopped agent reported.
pub struct AgentReport {
    pub requests: u64,
    pub lost: String,
}

impl Agent {
    pub fn start(bin: &Path) -> Result<Agent> {
        let mut child = Command::new(bin)
            .args(["diagnose", "--json", "--duration", "1h"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().context("agent stderr")?;
        let log = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("traceid: watching") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let mut agent = Agent { child, stderr };
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(()) => {}
            Err(_) => {
                let _ = agent.child.kill();
                let _ = agent.child.wait();
                bail!(
                    "the agent did not start watching within 90 s; its stderr:\n{}",
                    agent.stderr.lock().map(|s| s.clone()).unwrap_or_default()
                );
            }
        }
        // The poll loop is running once the line is printed; let it drain the seeding burst.
        thread::sleep(Duration::from_millis(500));
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, then the report it prints.
    pub fn stop(mut self) -> Result<AgentReport> {
        signal(self.pid(), "-INT");
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out).ok();
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!(
                "the agent exited with {status}; its stderr:\n{}",
                self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
            );
        }
        Ok(AgentReport {
            requests: json_number(&out, "requests").unwrap_or(0.0) as u64,
            lost: json_lost(&out),
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The first `"key": <number>` in a JSON text (the agent's report; top-level keys come first).
pub fn json_number(json: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\"");
    let at = json.find(&pat)? + pat.len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The `"lost": {...}` object of the agent's report, compacted (`{}` when nothing was lost).
pub fn json_lost(json: &str) -> String {
    let Some(at) = json.find("\"lost\"") else {
        return "?".to_owned();
    };
    let rest = &json[at..];
    match (rest.find('{'), rest.find('}')) {
        (Some(a), Some(b)) if a < b => rest[a..=b].split_whitespace().collect::<String>(),
        _ => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_report() {
        let j = "{\n  \"duration_s\": 5.1,\n  \"requests\": 1234,\n  \"services\": [{\"requests\": 9}],\n  \"lost\": {\n    \"kernel_ringbuf_full\": 3\n  }\n}";
        assert_eq!(json_number(j, "requests"), Some(1234.0));
        assert_eq!(json_number(j, "duration_s"), Some(5.1));
        assert_eq!(json_lost(j), "{\"kernel_ringbuf_full\":3}");
        assert_eq!(json_lost("{\"lost\": {}}"), "{}");
    }
}
