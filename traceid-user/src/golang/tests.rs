//! The Go layer on real binaries built here by Debian's Go (compared with what `go tool nm`
//! and `go tool objdump` say), and on hostile input.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::pclntab::{Layout, PclntabError};
use super::probes::{Probe, FUNCTIONS};
use super::*;
use crate::test_util::Rng;

/// A net/http server that also has a client (the probed functions of both sides), a
/// goroutine, and crypto/tls (linked by net/http).
const SERVER_GO: &str = r#"package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	if len(os.Args) > 2 {
		if resp, err := http.Get(os.Args[2]); err == nil {
			resp.Body.Close()
		}
	}
	if err := http.ListenAndServe("127.0.0.1:"+os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
"#;

/// Whether `go` can be run; when not, says why and returns false (a failure under CI=true).
pub(crate) fn go_present() -> bool {
    if Command::new("go").arg("version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true and `go` is missing (Debian golang-go)"
    );
    eprintln!("SKIPPED: `go` is missing (Debian golang-go)");
    false
}

/// Builds the Go program `source` (one .go file) into `dir`/`out` in GOPATH mode with the
/// extra `flags`; the path of the executable.
pub(crate) fn go_build(dir: &Path, source: &Path, out: &str, flags: &[&str]) -> PathBuf {
    let status = Command::new("go")
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(dir.join(out))
        .arg(source)
        .env("GO111MODULE", "off")
        .env("GOPATH", dir.join("gopath"))
        .env(
            "GOCACHE",
            std::env::temp_dir().join("traceid-golang-gocache"),
        )
        .env("GOFLAGS", "")
        .status()
        .expect("running go build");
    assert!(status.success(), "go build {flags:?} failed");
    dir.join(out)
}

/// The server built as (unstripped, stripped with `-ldflags=-s -w`) pairs, by Go's own
/// linker and by the external one (cgo's, where `.text` starts with C code before
/// `runtime.text`), once per test run; None after saying why when `go` is missing (a
/// failure under CI=true).
pub(super) fn built() -> Option<&'static [(PathBuf, PathBuf); 2]> {
    static BUILT: OnceLock<Option<[(PathBuf, PathBuf); 2]>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if !go_present() {
                return None;
            }
            let dir =
                std::env::temp_dir().join(format!("traceid-golang-unit-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let source = dir.join("server.go");
            std::fs::write(&source, SERVER_GO).unwrap();
            let build = |out: &str, flags: &[&str]| go_build(&dir, &source, out, flags);
            Some([
                (
                    build("server", &[]),
                    build("server-stripped", &["-ldflags=-s -w"]),
                ),
                (
                    build("server-external", &["-ldflags=-linkmode=external"]),
                    build(
                        "server-external-stripped",
                        &["-ldflags=-linkmode=external -s -w"],
                    ),
                ),
            ])
        })
        .as_ref()
}

fn go_tool(args: &[&str], binary: &Path) -> String {
    let out = Command::new("go")
        .arg("tool")
        .args(args)
        .arg(binary)
        .stderr(Stdio::inherit())
        .output()
        .expect("go tool");
    assert!(out.status.success(), "go tool {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn go_version() -> String {
    let out = Command::new("go")
        .args(["env", "GOVERSION"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn version_is_read_from_normal_and_stripped_binaries() {
    let Some(built) = built() else {
        return;
    };
    for path in built
        .iter()
        .flat_map(|(normal, stripped)| [normal, stripped])
    {
        let binary = GoBinary::open(path).unwrap();
        assert_eq!(
            binary.build_info().go_version,
            go_version(),
            "{}",
            path.display()
        );
        // GOPATH mode records the main package's path, not a module.
        assert_eq!(
            binary.build_info().module_path.as_deref(),
            Some("command-line-arguments")
        );
        assert_eq!(binary.architecture(), object::Architecture::X86_64);
    }
    // Not Go: a Rust test binary, a shell script.
    let err = GoBinary::open(Path::new("/proc/self/exe")).unwrap_err();
    assert!(err.is_not_go(), "{err}");
    assert!(GoBinary::open(Path::new("/usr/bin/ldd"))
        .unwrap_err()
        .is_not_go());
}

/// `go tool nm -size -sort address`: (address, size, name) of the text symbols.
fn nm_text(binary: &Path) -> Vec<(u64, u64, String)> {
    go_tool(&["nm", "-size", "-sort", "address"], binary)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let address = u64::from_str_radix(f.next()?, 16).ok()?;
            let size = f.next()?.parse().ok()?;
            f.next()?.eq_ignore_ascii_case("t").then_some(())?;
            Some((address, size, f.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

#[test]
fn functions_are_where_go_tool_nm_says_in_both_binaries() {
    let Some(built) = built() else {
        return;
    };
    for (normal, stripped) in built {
        functions_are_where_go_tool_nm_says(normal, stripped);
    }
}

fn functions_are_where_go_tool_nm_says(normal: &Path, stripped: &Path) {
    let symbols = nm_text(normal);
    let normal_table = GoBinary::open(normal).unwrap().pclntab().unwrap();
    let stripped_table = GoBinary::open(stripped).unwrap().pclntab().unwrap();
    assert_eq!(normal_table.layout(), Layout::Go118, "Go 1.18-1.19 magic");
    assert!(normal_table.len() > 1000);
    for &(name, _) in FUNCTIONS {
        let at = symbols
            .iter()
            .position(|(_, _, n)| n == name)
            .unwrap_or_else(|| panic!("nm has no {name}"));
        let (address, size, _) = symbols[at];
        let range = normal_table
            .find(name)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} not found"));
        // A function ends where the next one starts; nm's size leaves out the INT3 padding.
        assert_eq!(
            (range.entry, range.end),
            (address, symbols[at + 1].0),
            "{name}"
        );
        assert!(
            range.entry + size <= range.end && range.end - (range.entry + size) < 64,
            "{name}"
        );
        assert_eq!(
            stripped_table.find(name).unwrap(),
            Some(range),
            "{name} when stripped"
        );
    }
    assert_eq!(normal_table.find("main.nonexistent").unwrap(), None);
}

/// The RET instructions `go tool objdump -s ^FUNC$` prints: (address, bytes as hex).
fn objdump_rets(binary: &Path, function: &str) -> Vec<(u64, String)> {
    let pattern = format!("^{}$", regex_quote(function));
    go_tool(&["objdump", "-s", &pattern], binary)
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split('\t').filter(|f| !f.is_empty()).collect();
            let [_, address, bytes, asm, ..] = fields.as_slice() else {
                return None;
            };
            asm.starts_with("RET").then_some(())?;
            Some((
                u64::from_str_radix(address.strip_prefix("0x")?, 16).ok()?,
                bytes.to_string(),
            ))
        })
        .collect()
}

#[test]
fn ret_sites_are_the_rets_go_tool_objdump_prints() {
    let Some(built) = built() else {
        return;
    };
    for (normal, stripped) in built {
        ret_sites_are_the_rets_go_tool_objdump_prints_in(normal, stripped);
    }
}

fn ret_sites_are_the_rets_go_tool_objdump_prints_in(normal: &Path, stripped: &Path) {
    let normal_binary = GoBinary::open(normal).unwrap();
    let plan = probes::plan(&normal_binary).unwrap();
    let stripped_plan = probes::plan(&GoBinary::open(stripped).unwrap()).unwrap();
    let file = std::fs::read(normal).unwrap();
    let stripped_file = std::fs::read(stripped).unwrap();
    for ((name, sites), (_, stripped_sites)) in plan.functions.iter().zip(&stripped_plan.functions)
    {
        let sites = sites.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
        let stripped_sites = stripped_sites
            .as_ref()
            .unwrap_or_else(|e| panic!("{name} stripped: {e}"));
        assert_eq!(
            (sites.entry, sites.end, &sites.ret_offsets),
            (
                stripped_sites.entry,
                stripped_sites.end,
                &stripped_sites.ret_offsets
            ),
            "{name}: same code in the stripped binary"
        );
        let rets = objdump_rets(normal, name);
        match sites.probe {
            Probe::Entry => assert!(sites.ret_offsets.is_empty()),
            Probe::EntryAndReturns => {
                assert!(!rets.is_empty(), "objdump shows no RET in {name}");
                let expected: Vec<u64> = rets
                    .iter()
                    .map(|(address, _)| normal_binary.file_offset(*address).unwrap())
                    .collect();
                assert_eq!(sites.ret_offsets, expected, "{name}");
                // The file holds the very bytes objdump decoded at those offsets.
                for ((_, hex), &offset) in rets.iter().zip(&sites.ret_offsets) {
                    let at = usize::try_from(offset).unwrap();
                    let bytes: String = file[at..at + hex.len() / 2]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    assert_eq!(&bytes, hex, "{name} at {offset:#x}");
                    assert_eq!(stripped_file[at], file[at]);
                }
            }
        }
        // The entry offset holds the function's first instruction (Go's stack check).
        let entry = usize::try_from(sites.entry_offset).unwrap();
        let first = go_tool(
            &["objdump", "-s", &format!("^{}$", regex_quote(name))],
            normal,
        );
        let first_hex = first
            .lines()
            .nth(1)
            .and_then(|l| l.split('\t').filter(|f| !f.is_empty()).nth(2))
            .unwrap();
        let bytes: String = file[entry..entry + first_hex.len() / 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(bytes, first_hex, "{name} entry");
    }
}

fn regex_quote(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            if "().*".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

#[test]
fn a_running_go_server_is_discovered_once_with_its_paths() {
    let Some([(_, stripped), _]) = built() else {
        return;
    };
    let mut server = Command::new(stripped)
        .arg("0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut twin = Command::new(stripped)
        .arg("0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let found = discover(Path::new("/proc"));
    let _ = server.kill();
    let _ = twin.kill();
    let _ = (server.wait(), twin.wait());
    let ours: Vec<&RunningGo> = found
        .go
        .iter()
        .filter(|g| Path::new(&g.path) == stripped)
        .collect();
    // Two processes, one file: found once, under the first pid.
    assert_eq!(
        ours.len(),
        1,
        "{:?}",
        found.go.iter().map(|g| &g.path).collect::<Vec<_>>()
    );
    assert_eq!(ours[0].pid, server.id().min(twin.id()));
    assert_eq!(
        ours[0].host_path,
        Path::new(&format!("/proc/{}/root", ours[0].pid)).join(stripped.strip_prefix("/").unwrap())
    );
    assert_eq!(ours[0].binary.build_info().go_version, go_version());
    // This test binary (Rust) is not reported, neither as Go nor as an error.
    let me = std::fs::read_link("/proc/self/exe").unwrap();
    assert!(found.go.iter().all(|g| Path::new(&g.path) != me));
}

#[test]
fn a_corrupted_real_binary_gives_errors_not_panics() {
    let Some([(_, stripped), _]) = built() else {
        return;
    };
    let original = std::fs::read(stripped).unwrap();
    let mut rng = Rng::new(15);
    for round in 0..60 {
        let mut bytes = original.clone();
        // Flip bytes in the headers, the build info, the function table and the code.
        for _ in 0..1 + rng.index(16) {
            let at = match rng.index(3) {
                0 => rng.index(4096),
                _ => rng.index(bytes.len()),
            };
            bytes[at] = rng.next_u64() as u8;
        }
        if round % 5 == 0 {
            bytes.truncate(rng.index(original.len()));
        }
        if let Ok(binary) = GoBinary::parse(bytes) {
            let _ = probes::plan(&binary);
        }
    }
}

/// A synthetic function table: `functions` are (name, entry offset from the text start,
/// end offset) in order, without gaps.
fn synthetic_pclntab(layout: Layout, functions: &[(&str, u32, u32)]) -> Vec<u8> {
    let (magic, words): (u32, usize) = match layout {
        Layout::Go116 => (0xffff_fffa, 7),
        Layout::Go118 => (0xffff_fff0, 8),
        Layout::Go120 => (0xffff_fff1, 8),
    };
    let entry_size = if layout == Layout::Go116 { 8 } else { 4 };
    let header_len = 8 + 8 * words;
    let mut names = Vec::new();
    let mut name_offsets = Vec::new();
    for (name, _, _) in functions {
        name_offsets.push(names.len() as u32);
        names.extend_from_slice(name.as_bytes());
        names.push(0);
    }
    let funcnametab = header_len;
    let pcln = (funcnametab + names.len() + 7) & !7;
    let n = functions.len();
    let functab_len = (2 * n + 1) * entry_size;
    let record_len = entry_size + 4 * 9;
    let text_start = 0x40_1000u64;
    let entry = |off: u32| {
        if layout == Layout::Go116 {
            (text_start + u64::from(off)).to_le_bytes().to_vec()
        } else {
            off.to_le_bytes().to_vec()
        }
    };
    let mut table = Vec::new();
    let mut records = Vec::new();
    for (i, &(_, start, _)) in functions.iter().enumerate() {
        table.extend(entry(start));
        let record_at = (functab_len + i * record_len) as u64;
        table.extend(if entry_size == 8 {
            record_at.to_le_bytes().to_vec()
        } else {
            (record_at as u32).to_le_bytes().to_vec()
        });
        records.extend(entry(start));
        records.extend(name_offsets[i].to_le_bytes());
        records.resize((i + 1) * record_len, 0);
    }
    table.extend(entry(functions.last().map_or(0, |f| f.2)));
    let mut data = Vec::new();
    data.extend(magic.to_le_bytes());
    data.extend([0, 0, 1, 8]);
    let mut header_words = vec![n as u64, 0];
    if layout != Layout::Go116 {
        header_words.push(text_start);
    }
    header_words.extend([funcnametab as u64, 0, 0, 0, pcln as u64]);
    for w in header_words {
        data.extend(w.to_le_bytes());
    }
    data.extend(&names);
    data.resize(pcln, 0);
    data.extend(table);
    data.extend(records);
    data
}

const SYNTHETIC: &[(&str, u32, u32)] = &[
    ("runtime.text", 0, 0x40),
    ("net/http.serverHandler.ServeHTTP", 0x40, 0x400),
    ("main.main", 0x400, 0x460),
];

#[test]
fn each_pclntab_layout_locates_functions() {
    for layout in [Layout::Go116, Layout::Go118, Layout::Go120] {
        let table = Pclntab::parse(synthetic_pclntab(layout, SYNTHETIC), Some(0x40_1000)).unwrap();
        assert_eq!(table.layout(), layout);
        assert_eq!(table.len(), 3);
        assert_eq!(
            table.find("net/http.serverHandler.ServeHTTP").unwrap(),
            Some(FunctionRange {
                entry: 0x40_1040,
                end: 0x40_1400
            }),
            "{layout:?}"
        );
        assert_eq!(
            table.find("main.main").unwrap(),
            Some(FunctionRange {
                entry: 0x40_1400,
                end: 0x40_1460
            })
        );
        assert_eq!(table.find("main.mai").unwrap(), None);
        assert!(matches!(
            table.function(3),
            Err(PclntabError::NoSuchFunction { .. })
        ));
    }
    // Go 1.18+ entries are offsets from the header's text start; the caller's stands in
    // only for a 0 there.
    let own = Pclntab::parse(synthetic_pclntab(Layout::Go118, SYNTHETIC), Some(0x50_0000)).unwrap();
    assert_eq!(own.find("main.main").unwrap().unwrap().entry, 0x40_1400);
    let mut unrelocated = synthetic_pclntab(Layout::Go118, SYNTHETIC);
    unrelocated[24..32].fill(0);
    let moved = Pclntab::parse(unrelocated, Some(0x50_0000)).unwrap();
    assert_eq!(moved.find("main.main").unwrap().unwrap().entry, 0x50_0400);
}

#[test]
fn lying_pclntab_offsets_are_errors() {
    let good = synthetic_pclntab(Layout::Go118, SYNTHETIC);
    let with_word = |word: usize, value: u64| {
        let mut bad = good.clone();
        bad[8 + 8 * word..16 + 8 * word].copy_from_slice(&value.to_le_bytes());
        Pclntab::parse(bad, None)
    };
    // nfunc far beyond the table, pclnOffset and funcnameOffset past the end.
    for (word, value) in [(0, 1 << 40), (0, u64::MAX), (7, 1 << 20), (3, u64::MAX)] {
        assert!(
            matches!(
                with_word(word, value),
                Err(PclntabError::OutOfBounds { .. })
            ),
            "word {word} = {value:#x}"
        );
    }
    // A name offset past the names: found as an error, not as garbage.
    let mut bad = good.clone();
    let pcln = u64::from_le_bytes(bad[64..72].try_into().unwrap()) as usize;
    let record = pcln + u32::from_le_bytes(bad[pcln + 4..pcln + 8].try_into().unwrap()) as usize;
    bad[record + 4..record + 8].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    let table = Pclntab::parse(bad, None).unwrap();
    assert!(matches!(
        table.find("main.main"),
        Err(PclntabError::OutOfBounds { .. })
    ));
    // Entries out of order (a function ending before it starts).
    let mut bad = good.clone();
    bad[pcln + 8..pcln + 12].copy_from_slice(&0u32.to_le_bytes());
    let table = Pclntab::parse(bad, None).unwrap();
    assert!(matches!(
        table.find("main.main"),
        Err(PclntabError::BadRange { index: 0, .. })
    ));
    // Go 1.2's layout and other magics.
    let mut old = good.clone();
    old[..4].copy_from_slice(&0xffff_fffbu32.to_le_bytes());
    assert_eq!(Pclntab::parse(old, None).unwrap_err(), PclntabError::TooOld);
    assert_eq!(
        Pclntab::parse(vec![0; 4], None).unwrap_err(),
        PclntabError::Truncated
    );
    let mut quantum = good;
    quantum[6] = 3;
    assert!(matches!(
        Pclntab::parse(quantum, None),
        Err(PclntabError::BadHeader { quantum: 3, .. })
    ));
}

#[test]
fn random_damage_to_a_pclntab_never_panics() {
    let mut rng = Rng::new(0x60);
    for layout in [Layout::Go116, Layout::Go118] {
        let good = synthetic_pclntab(layout, SYNTHETIC);
        for _ in 0..3000 {
            let mut bytes = good.clone();
            for _ in 0..1 + rng.index(4) {
                let at = rng.index(bytes.len());
                bytes[at] = if rng.pct(50) {
                    0xff
                } else {
                    rng.next_u64() as u8
                };
            }
            if rng.pct(20) {
                bytes.truncate(rng.index(good.len()));
            }
            if let Ok(table) = Pclntab::parse(bytes, rng.pct(50).then_some(0x40_1000)) {
                for i in 0..table.len().min(16) {
                    if let Ok((_, range)) = table.function(i) {
                        assert!(range.entry < range.end);
                    }
                }
                let _ = table.find("main.main");
            }
        }
    }
}

#[test]
fn garbage_and_truncated_elf_files_are_errors() {
    let mut rng = Rng::new(7);
    // The head of a real ELF file (this test binary), cut anywhere and damaged.
    let me = std::fs::read("/proc/self/exe").unwrap();
    let head = &me[..me.len().min(1 << 16)];
    for _ in 0..500 {
        let mut bytes = head[..rng.index(head.len())].to_vec();
        if !bytes.is_empty() && rng.pct(50) {
            let at = rng.index(bytes.len());
            bytes[at] = rng.next_u64() as u8;
        }
        assert!(GoBinary::parse(bytes).is_err());
    }
    let noise: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
    assert!(GoBinary::parse(noise).unwrap_err().is_not_go());
    assert!(GoBinary::parse(Vec::new()).unwrap_err().is_not_go());
}
