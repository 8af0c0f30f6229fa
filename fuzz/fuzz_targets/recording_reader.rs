//! The record file reader on arbitrary files, and the writer's redaction on what it reads:
//! errors, never panics; redaction keeps every record's length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traceid::recording::{Reader, Redactor};

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = Reader::new(data) else {
        return;
    };
    let _ = reader.redaction_missing();
    let mut redactor = Redactor::new(4);
    while let Ok(Some(mut rec)) = reader.next_record() {
        let len = rec.len();
        redactor.redact(&mut rec);
        assert_eq!(rec.len(), len);
    }
});
