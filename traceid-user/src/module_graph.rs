//! The module graph of the library has no circles, and records flow one way.
//!
//! Reads the crate's own sources (non-test code, comments skipped: files named `tests.rs`/
//! `*_tests.rs` and `mod tests { .. }` blocks are left out) and collects, per top-level module, the other
//! top-level modules it names through `crate::<module>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level modules declared in lib.rs, except the test utilities.
fn modules() -> Vec<String> {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs");
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .filter_map(|l| l.strip_suffix(';'))
        .filter(|m| *m != "test_util")
        .map(str::to_string)
        .collect()
}

fn files_of(module: &str) -> Vec<PathBuf> {
    let file = src_dir().join(format!("{module}.rs"));
    let dir = src_dir().join(module);
    let mut out = Vec::new();
    if file.is_file() {
        out.push(file);
    }
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                if name != "tests" && !name.ends_with("_tests") {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// The source without its inline `mod tests { .. }` block (always last in our files).
fn non_test_code(src: &str) -> &str {
    match src.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &src[..i],
        None => src,
    }
}

fn graph() -> Graph {
    let mods = modules();
    let mut g = Graph::new();
    for m in &mods {
        let deps = g.entry(m.clone()).or_default();
        for f in files_of(m) {
            let src = std::fs::read_to_string(&f).expect("source file");
            // Comments may name any module; only code makes a dependency.
            let code: String = non_test_code(&src)
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for other in &mods {
                if other != m && code.contains(&format!("crate::{other}")) {
                    deps.insert(other.clone());
                }
            }
        }
    }
    g
}

/// A cycle through `start`, if any (depth-first).
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut c = path[i..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in g.get(node).into_iter().flatten() {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(g, n, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_reader_sees_every_module() {
    let g = graph();
    for m in [
        "engine",
        "lifecycle",
        "pipeline",
        "record",
        "report",
        "metrics",
    ] {
        assert!(g.contains_key(m), "{m} missing from {g:?}");
    }
    // The reader finds real edges (a reader that sees nothing would pass every check below).
    assert!(g["pipeline"].contains("engine"), "{g:?}");
    assert!(g["engine"].contains("record"), "{g:?}");
}

#[test]
fn no_circles_between_modules() {
    let g = graph();
    assert_eq!(cycle(&g), None, "module graph: {g:#?}");
}

#[test]
fn records_flow_one_way() {
    let g = graph();
    let sinks = ["report", "metrics", "recording"];
    let producers = [
        "engine",
        "lifecycle",
        "protocol",
        "tracectx",
        "event",
        "pipeline",
    ];
    for p in producers {
        for s in sinks {
            assert!(
                !g[p].contains(s),
                "producer {p} depends on sink {s}: {g:#?}"
            );
        }
        // Producers are pure: only the live loop and the preflight touch the kernel.
        assert!(!g[p].contains("capture"), "{p} depends on capture: {g:#?}");
        assert!(!g[p].contains("agent"), "{p} depends on agent: {g:#?}");
    }
    // The contract types are a leaf (the trace format enum aside).
    let record: Vec<&String> = g["record"].iter().filter(|d| *d != "tracectx").collect();
    assert!(record.is_empty(), "record depends on {record:?}");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default();
    assert_eq!(cycle(&g), None);
    g.get_mut("c").unwrap().insert("a".into());
    assert_eq!(
        cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
