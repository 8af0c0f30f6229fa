//! The Huffman code of HPACK (RFC 7541 §5.2 and Appendix B), decoding only.
//!
//! The code is canonical: codes of one length are consecutive and ordered by symbol, each
//! length starting where the previous one ended, shifted left. So the bit length of every
//! symbol is all the table needs; the codes follow from it (the tests check a few against
//! the RFC and that the lengths make a complete prefix code).

/// Bit length of the code of every symbol 0..=255, then EOS (256), RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// The canonical code as decoding needs it: per bit length, how many codes have it and the
/// first code of that length; the symbols ordered by (length, symbol).
struct Canonical {
    count: [u32; MAX_LEN + 1],
    first_code: [u32; MAX_LEN + 1],
    /// Index in `symbols` of the first symbol of each length.
    first_index: [u32; MAX_LEN + 1],
    symbols: [u16; 257],
}

const fn canonical() -> Canonical {
    let mut count = [0u32; MAX_LEN + 1];
    let mut i = 0;
    while i < CODE_LENGTHS.len() {
        count[CODE_LENGTHS[i] as usize] += 1;
        i += 1;
    }
    let mut first_code = [0u32; MAX_LEN + 1];
    let mut first_index = [0u32; MAX_LEN + 1];
    let mut code = 0u32;
    let mut index = 0u32;
    let mut len = 1;
    while len <= MAX_LEN {
        first_code[len] = code;
        first_index[len] = index;
        code = (code + count[len]) << 1;
        index += count[len];
        len += 1;
    }
    let mut symbols = [0u16; 257];
    let mut next = first_index;
    let mut sym = 0;
    while sym < CODE_LENGTHS.len() {
        let len = CODE_LENGTHS[sym] as usize;
        symbols[next[len] as usize] = sym as u16;
        next[len] += 1;
        sym += 1;
    }
    Canonical {
        count,
        first_code,
        first_index,
        symbols,
    }
}

static CODE: Canonical = canonical();

/// Why a Huffman-coded string is invalid (RFC 7541 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    #[error("huffman string contains EOS")]
    Eos,
    #[error("huffman padding longer than 7 bits or not all ones")]
    Padding,
}

/// Decodes `input`, appending at most `max_out` bytes to `out` (the rest is still decoded and
/// checked); returns the decoded length (what HPACK counts in a table entry's size).
pub fn decode(input: &[u8], max_out: usize, out: &mut Vec<u8>) -> Result<usize, HuffmanError> {
    let mut code: u32 = 0;
    let mut len: usize = 0;
    let mut decoded = 0usize;
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let offset = code.wrapping_sub(CODE.first_code[len]);
            if code >= CODE.first_code[len] && offset < CODE.count[len] {
                let sym = CODE.symbols[(CODE.first_index[len] + offset) as usize];
                if sym == EOS {
                    return Err(HuffmanError::Eos);
                }
                if decoded < max_out {
                    out.push(sym as u8);
                }
                decoded += 1;
                code = 0;
                len = 0;
            } else if len >= MAX_LEN {
                // Every 30-bit pattern is a code or a prefix of none: only EOS is 30 ones,
                // and it was caught above. Unreachable for a complete code; kept total.
                return Err(HuffmanError::Padding);
            }
        }
    }
    // At most 7 bits of padding, the most significant bits of EOS (all ones).
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Padding);
    }
    Ok(decoded)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The code of `sym` as (code, length), derived the canonical way (test encoder).
    pub(crate) fn code_of(sym: usize) -> (u32, u8) {
        let len = CODE_LENGTHS[sym] as usize;
        let rank = (0..sym)
            .filter(|&s| CODE_LENGTHS[s] as usize == len)
            .count() as u32;
        (CODE.first_code[len] + rank, len as u8)
    }

    /// Huffman-encodes `s` (test helper: the encoder side of the RFC examples).
    pub(crate) fn encode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &b in s {
            let (code, len) = code_of(usize::from(b));
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            let pad = 8 - bits;
            out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
        }
        out
    }

    fn dec(input: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        let n = decode(input, usize::MAX, &mut out)?;
        assert_eq!(n, out.len());
        Ok(out)
    }

    #[test]
    fn lengths_make_a_complete_prefix_code() {
        // Kraft equality: a mistyped length breaks it.
        let kraft: f64 = CODE_LENGTHS.iter().map(|&l| 2f64.powi(-i32::from(l))).sum();
        assert_eq!(kraft, 1.0);
    }

    #[test]
    fn derived_codes_match_the_rfc() {
        // A sample of Appendix B rows, across lengths.
        for (sym, code, len) in [
            (0usize, 0x1ff8u32, 13u8),
            (b' ' as usize, 0x14, 6),
            (b'0' as usize, 0x0, 5),
            (b'a' as usize, 0x3, 5),
            (b'z' as usize, 0x7b, 7),
            (b'~' as usize, 0x1ffd, 13),
            (194, 0xfffeb, 20),
            (200, 0x3ffffe2, 26),
            (255, 0x3ffffee, 26),
            (256, 0x3fffffff, 30),
        ] {
            assert_eq!(code_of(sym), (code, len), "symbol {sym}");
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(dec(&encode(&all)).unwrap(), all);
        for b in 0..=255u8 {
            assert_eq!(dec(&encode(&[b])).unwrap(), [b]);
        }
    }

    #[test]
    fn rfc7541_c4_strings() {
        let cases: [(&str, &[u8]); 3] = [
            (
                "www.example.com",
                &[
                    0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
                ],
            ),
            ("no-cache", &[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]),
            (
                "custom-value",
                &[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf],
            ),
        ];
        for (text, coded) in cases {
            assert_eq!(dec(coded).unwrap(), text.as_bytes());
            assert_eq!(encode(text.as_bytes()), coded);
        }
    }

    #[test]
    fn rejects_bad_padding_and_eos() {
        // 'a' is 00011 (5 bits): padding of zeros is invalid.
        assert_eq!(dec(&[0b0001_1000]), Err(HuffmanError::Padding));
        // A whole byte of ones after a full symbol is padding longer than 7 bits.
        let mut v = encode(b"0");
        v.push(0xff);
        assert_eq!(dec(&v), Err(HuffmanError::Padding));
        // EOS itself (30 ones), padded: forbidden.
        assert_eq!(dec(&[0xff, 0xff, 0xff, 0xff]), Err(HuffmanError::Eos));
        assert_eq!(dec(&[]), Ok(Vec::new()));
    }

    #[test]
    fn output_is_capped_but_input_still_checked() {
        let mut out = Vec::new();
        assert_eq!(decode(&encode(b"hello world"), 5, &mut out), Ok(11));
        assert_eq!(out, b"hello");
        let mut bad = encode(b"hello world");
        bad.push(0);
        assert!(decode(&bad, 5, &mut Vec::new()).is_err());
    }
}
