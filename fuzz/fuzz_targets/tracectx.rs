//! Every trace-context parser: header (name, value) pairs whose names are mostly the known
//! trace headers (so each format's parser gets the input) and sometimes arbitrary.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traceid::tracectx::{extract, HeaderNames};

fuzz_target!(|data: &[u8]| {
    let names = HeaderNames::new(&["x-correlation-id".to_string()]);
    let known: Vec<&str> = names.iter().collect();
    // Lines "<selector byte><value>": a selector below 0xf0 picks a known header name, else
    // the value up to ':' is the name itself.
    let mut owned: Vec<(String, &[u8])> = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&selector, rest)) = line.split_first() else {
            continue;
        };
        if selector < 0xf0 && !known.is_empty() {
            owned.push((known[usize::from(selector) % known.len()].to_string(), rest));
        } else {
            let colon = rest.iter().position(|&b| b == b':').unwrap_or(rest.len());
            let name = String::from_utf8_lossy(&rest[..colon]).into_owned();
            owned.push((name, rest.get(colon + 1..).unwrap_or(&[])));
        }
    }
    let headers = owned.iter().map(|(n, v)| (n.as_str(), *v));
    let found = extract(headers, &names);
    let _ = found.primary();
    let _ = found.inconsistent();
    for a in &found.contexts {
        for b in &found.contexts {
            let _ = a.same_trace(b);
        }
    }
});
