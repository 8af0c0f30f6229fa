//! HTTP/1 reassembly over arbitrarily split input: both directions of one connection, cut at
//! any byte, interleaved, with capture-window gaps, through the `ProtocolParser` interface.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traceid::protocol::http1::HttpConn;
use traceid::protocol::{Chunk, Flow, Limits, ProtocolParser};
use traceid_fuzz::frames;

fuzz_target!(|data: &[u8]| {
    let mut conn = HttpConn::new(Limits {
        max_head_bytes: 4096,
        max_pending: 8,
    });
    // Names come in any case (see `ProtocolParser`).
    let keep = |name: &str| {
        name.eq_ignore_ascii_case("traceparent")
            || name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-"))
    };
    let mut out = Vec::new();
    for (i, f) in frames(data).enumerate() {
        let flow = if f.from_client {
            Flow::ClientToServer
        } else {
            Flow::ServerToClient
        };
        let chunk = Chunk {
            data: f.data,
            real_len: f.data.len() as u64 + f.gap,
            ts_ns: i as u64,
            tid: 1,
        };
        conn.on_data(flow, chunk, &keep, &mut out);
        // Bounded: never more messages than the bytes could hold.
        assert!(out.len() <= 2 * (data.len() + 1));
    }
    conn.flush(&mut out);
    conn.on_close(u64::MAX, &mut out);
    let _ = conn.is_dead();
});
