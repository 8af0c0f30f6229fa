//! The record file reader on arbitrary files, and the writer's redaction on what it reads:
//! errors, never panics; redaction gives back every record once, in order, with its length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traceid::recording::{Reader, Redactor};

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = Reader::new(data) else {
        return;
    };
    let _ = reader.redaction_missing();
    let mut redactor = Redactor::new(4);
    let mut lens = std::collections::VecDeque::new();
    let check = |rec: Vec<u8>, lens: &mut std::collections::VecDeque<usize>| {
        assert_eq!(Some(rec.len()), lens.pop_front());
    };
    while let Ok(Some(rec)) = reader.next_record() {
        lens.push_back(rec.len());
        redactor.push(rec);
        while let Some(rec) = redactor.pop() {
            check(rec, &mut lens);
        }
    }
    redactor.finish();
    while let Some(rec) = redactor.pop() {
        check(rec, &mut lens);
    }
    assert!(lens.is_empty());
});
