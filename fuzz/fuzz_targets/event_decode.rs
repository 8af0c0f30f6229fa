//! The raw event decoder on arbitrary records: an event or an error, never a panic, and a
//! data event's payload is exactly what it claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traceid::event::{decode, Event};

fuzz_target!(|data: &[u8]| {
    if let Ok(Event::Data(ev, payload)) = decode(data) {
        assert_eq!(payload.len(), ev.captured as usize);
        assert!(u64::from(ev.captured) <= ev.real_len);
    }
});
