//! How the fuzz targets read their input: every target splits the fuzzer's bytes into the
//! pieces its code under test takes, so that any byte string is a valid input.

/// Splits `data` into length-prefixed records (u16 little-endian length, then that many bytes;
/// the last record takes what is left when the input ends early).
pub fn records(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = match data {
            [] | [_] => return None,
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        };
        let (rec, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        Some(rec)
    })
}

/// One captured chunk of an HTTP/1 stream as the `http1_split` target reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// From the client (true) or the server.
    pub from_client: bool,
    /// The captured bytes.
    pub data: &'a [u8],
    /// Bytes that followed uncaptured (a capture window's gap).
    pub gap: u64,
}

/// Splits `data` into frames: one control byte (bit 7: from the client; bit 6: a gap follows,
/// its size in the next byte times 16; bits 0-5: the frame's length), then the bytes. So the
/// fuzzer chooses every split point and interleaving of the two directions.
pub fn frames(mut data: &[u8]) -> impl Iterator<Item = Frame<'_>> {
    std::iter::from_fn(move || {
        let (&control, rest) = data.split_first()?;
        let (gap, rest) = if control & 0x40 != 0 {
            match rest.split_first() {
                Some((&g, rest)) => (u64::from(g) * 16, rest),
                None => (0, rest),
            }
        } else {
            (0, rest)
        };
        let len = usize::from(control & 0x3f).min(rest.len());
        let (bytes, rest) = rest.split_at(len);
        data = rest;
        Some(Frame {
            from_client: control & 0x80 != 0,
            data: bytes,
            gap,
        })
    })
}
