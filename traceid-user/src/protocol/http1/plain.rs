//! One pass over heads of the common shape, before the general way.
//!
//! Nearly every head on the wire has CRLF line ends, one space between the parts of its first
//! line, and header lines `Name: value`, none folded, whose values are printable ASCII where
//! they are read. [`request`] and
//! [`response`] read such a head in one pass from the start of the bytes: they find its end on
//! the way and hand each header line to [`ParsedHead::add_header`] as they meet it (no header
//! array, no second look at the names). On anything else they give up (`None`) and the caller
//! goes the general way: find the end of the head, then httparse.
//!
//! Every head accepted here is one httparse accepts and reads the same way as far as the head
//! shows it (same method, target, version, status, and the same values of the headers read or
//! kept, up to the spaces around them, which every reader of a value trims), ending at the
//! first empty line as `parse::find_head_end` finds it: which way a head took never shows in
//! what is reported. Values of the other headers are not checked byte by byte (most of a
//! head's bytes are theirs: cookies, user agents), only for what would change its lines.

use memchr::{memchr, memchr3};

use super::parse::{HeaderUse, ParsedHead, STACK_HEADERS};

/// A request head at the start of `bytes` (bytes after it are ignored): the head and its
/// length. None when the head is not of the common shape, or not complete in `bytes`.
pub(super) fn request(bytes: &[u8], keep: &dyn Fn(&str) -> bool) -> Option<(ParsedHead, usize)> {
    let (line, headers_at) = line_at(bytes, 0)?;
    // METHOD SP target SP HTTP/1.x
    let sp = memchr(b' ', line)?;
    let (method, rest) = line.split_at(sp);
    let rest = rest.get(1..)?;
    let (target, version) = rest.split_at(rest.len().checked_sub(VERSION.len() + 1)?);
    let [b' ', version @ ..] = version else {
        return None;
    };
    let version = version_minor(version)?;
    let method_ok = !method.is_empty()
        && method
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
    // One space on each side of the target: a target that starts or ends with one (several
    // spaces, which httparse skips) is left to the general way.
    let target_ok = !target.is_empty() && target.iter().all(|&b| (b'!'..=b'~').contains(&b));
    if !method_ok || !target_ok {
        return None;
    }
    let mut head = ParsedHead::request(visible(method)?, visible(target)?, version);
    let end = headers(bytes, headers_at, &mut head, keep)?;
    Some((head, end))
}

/// A response head at the start of `bytes`, as [`request`] reads a request head.
pub(super) fn response(bytes: &[u8], keep: &dyn Fn(&str) -> bool) -> Option<(ParsedHead, usize)> {
    let (line, headers_at) = line_at(bytes, 0)?;
    // HTTP/1.x SP 3DIGIT [SP reason]
    let version = version_minor(line.get(..VERSION.len())?)?;
    let (code, reason) = line.get(VERSION.len()..)?.split_at_checked(4)?;
    let [b' ', digits @ ..] = code else {
        return None;
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = digits
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    let reason_ok = reason.is_empty() || (reason.first() == Some(&b' ') && printable(reason));
    if !reason_ok {
        return None;
    }
    let mut head = ParsedHead::response(status, version);
    let end = headers(bytes, headers_at, &mut head, keep)?;
    Some((head, end))
}

const VERSION: &[u8] = b"HTTP/1.1";

/// The minor version of `HTTP/1.0` or `HTTP/1.1`.
fn version_minor(v: &[u8]) -> Option<u8> {
    match v {
        b"HTTP/1.1" => Some(1),
        b"HTTP/1.0" => Some(0),
        _ => None,
    }
}

/// The header lines from `at` to the empty line; the length of the head.
fn headers(
    bytes: &[u8],
    mut at: usize,
    head: &mut ParsedHead,
    keep: &dyn Fn(&str) -> bool,
) -> Option<usize> {
    // More lines than httparse's first array holds are left to it (it has a second one).
    for _ in 0..=STACK_HEADERS {
        let rest = bytes.get(at..)?;
        if rest.starts_with(b"\r\n") {
            return Some(at + 2);
        }
        // Past the end of the line when it has no colon: then the name holds its CRLF.
        let colon = memchr(b':', rest)?;
        let name = visible(rest.get(..colon)?).filter(|name| !name.is_empty())?;
        let header = HeaderUse::of(name, keep);
        // A header read or kept must be plain, name and value. Any other header only must not
        // change the lines (a bare LF ends one for httparse, a NUL fails the head, a space
        // before the colon is skipped in responses); a byte httparse refuses otherwise only
        // makes it drop the header, which nothing reads.
        if !header.is_ignored() && !name.bytes().all(|b| NAME_BYTES[usize::from(b)]) {
            return None;
        }
        let value_at = at + colon + 1;
        let value_rest = bytes.get(value_at..)?;
        let cr = memchr3(b'\r', b'\n', 0, value_rest)?;
        if value_rest.get(cr..cr + 2) != Some(b"\r\n") {
            return None;
        }
        let value = value_rest.get(..cr)?;
        if !header.is_ignored() && !printable(value) {
            return None;
        }
        head.add_header_as(header, name, value.trim_ascii());
        at = value_at + cr + 2;
    }
    None
}

/// The line that starts at `at` (without its CRLF) and where the next one starts. None when
/// no CR follows, or a CR not followed by LF.
fn line_at(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = bytes.get(at..)?;
    let cr = memchr(b'\r', rest)?;
    if rest.get(cr + 1) != Some(&b'\n') {
        return None;
    }
    Some((rest.get(..cr)?, at + cr + 2))
}

/// Header name characters of the common shape (a subset of RFC 9110's `tchar`), by byte: a
/// table, as every byte of every name is looked up.
const NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        b += 1;
    }
    table
};

/// Printable ASCII and spaces only (no tab, no control byte, nothing above `~`): a bare LF
/// or CR, or anything httparse would weigh, sends the head the general way.
fn printable(v: &[u8]) -> bool {
    all_from(v, b' ')
}

/// Visible ASCII only (`!` to `~`), as text.
fn visible(v: &[u8]) -> Option<&str> {
    if !all_from(v, b'!') {
        return None;
    }
    // SAFETY: every byte was just checked to be ASCII, which is valid UTF-8.
    Some(unsafe { std::str::from_utf8_unchecked(v) })
}

/// Every byte of `v` is from `low` (at least 1) to `~`.
fn all_from(v: &[u8], low: u8) -> bool {
    // Eight bytes per step: every line of every head goes through here.
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut words = v.chunks_exact(8);
    for word in &mut words {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            return false;
        };
        let w = u64::from_le_bytes(word);
        // A byte below `low` sets its high bit when `low` is taken from it, one above '~'
        // (0x7f and up) when 1 is added or, from `low + 0x80` up, already after the
        // subtraction. Borrows and carries leave a byte only out of one that is outside the
        // range itself, so the lowest such byte is always caught.
        if (w.wrapping_sub(ONES * u64::from(low)) | w.wrapping_add(ONES)) & HIGH != 0 {
            return false;
        }
    }
    words.remainder().iter().all(|&b| (low..=b'~').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::super::parse::{find_head_end, parse_request, parse_response};
    use super::*;

    fn keep_all(_: &str) -> bool {
        true
    }

    fn keep_tp(name: &str) -> bool {
        name.eq_ignore_ascii_case("traceparent")
    }

    /// The one-pass reading of `head` (a complete head), checked against httparse's.
    fn same_as_httparse(head: &[u8], is_request: bool) -> Option<ParsedHead> {
        same_as_httparse_keeping(head, is_request, &keep_all)
    }

    fn same_as_httparse_keeping(
        head: &[u8],
        is_request: bool,
        keep: &dyn Fn(&str) -> bool,
    ) -> Option<ParsedHead> {
        let (plain, general) = if is_request {
            (request(head, keep), parse_request(head, keep))
        } else {
            (response(head, keep), parse_response(head, keep))
        };
        let (parsed, end) = plain?;
        assert_eq!(end, head.len(), "{:?}", String::from_utf8_lossy(head));
        assert_eq!(
            Ok(&parsed),
            general.as_ref(),
            "{:?}",
            String::from_utf8_lossy(head)
        );
        Some(parsed)
    }

    #[test]
    fn common_heads_are_read_in_one_pass_as_httparse_reads_them() {
        let heads: [(&[u8], bool); 6] = [
            (b"GET /a?b=c HTTP/1.1\r\nHost: x\r\ntraceparent:  00-ab  \r\nX-Empty:\r\n\r\n", true),
            (b"POST /p HTTP/1.0\r\nContent-Length: 12\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", true),
            (b"M-SEARCH * HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
            (b"HTTP/1.0 404\r\nX-B3-TraceId: 1\r\n\r\n", false),
            (b"HTTP/1.1 101 Switching   Protocols \r\nUpgrade: h2c\r\n\r\n", false),
        ];
        for (head, is_request) in heads {
            assert!(
                same_as_httparse(head, is_request).is_some(),
                "{:?} should be read in one pass",
                String::from_utf8_lossy(head)
            );
        }
        let p = same_as_httparse(heads[0].0, true).unwrap();
        assert_eq!((&*p.method, &*p.path, p.version), ("GET", "/a", 1));
        assert_eq!(
            p.headers[1],
            ("traceparent".to_string(), "00-ab".to_string())
        );
    }

    #[test]
    fn byte_ranges_are_checked_for_every_byte_at_every_place() {
        for low in [b' ', b'!'] {
            for b in 0..=u8::MAX {
                for at in 0..19 {
                    let mut line = *b"abcdefghijklmnopqrs";
                    line[at] = b;
                    let want = (low..=b'~').contains(&b);
                    assert_eq!(all_from(&line, low), want, "byte {b:#x} at {at}");
                    // Next to a byte that is out of range itself.
                    line[(at + 1) % line.len()] = 0x7f;
                    assert!(!all_from(&line, low), "byte {b:#x} at {at}");
                }
            }
        }
        assert!(printable(b"a b") && visible(b"a b").is_none());
        assert_eq!(visible(b"Host"), Some("Host"));
    }

    #[test]
    fn headers_nobody_reads_are_not_checked_byte_by_byte() {
        // httparse drops these lines (a byte it refuses in the name or the value), the one
        // pass lets them by: neither reads them, so both read the same head.
        let head = b"GET / HTTP/1.1\r\nX(y: 1\r\nCookie: a\x01b\xff\r\ntraceparent: 00-1\r\n\r\n";
        let p = same_as_httparse_keeping(head, true, &keep_tp).expect("one pass");
        assert_eq!(p.headers, [("traceparent".to_string(), "00-1".to_string())]);
        // Read or kept, the same bytes send the head the general way.
        for head in [
            &b"GET / HTTP/1.1\r\ntraceparent: a\x01b\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: \xff\r\n\r\n",
        ] {
            assert!(request(head, &keep_tp).is_none(), "{head:?}");
        }
        assert!(request(b"GET / HTTP/1.1\r\nX(y: 1\r\n\r\n", &keep_all).is_none());
        // What would change the lines does too, read or not.
        for head in [
            &b"GET / HTTP/1.1\r\nCookie: a\nb: c\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nCookie: a\x00\r\n\r\n",
            b"GET / HTTP/1.1\r\nCookie: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nCoo kie: a\r\n\r\n",
        ] {
            assert!(request(head, &keep_tp).is_none(), "{head:?}");
        }
        let spaced = b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n";
        assert!(response(spaced, &keep_tp).is_none());
    }

    /// A head of the common shape from random parts, then perhaps one byte changed.
    fn random_head(rng: &mut crate::test_util::Rng, is_request: bool) -> Vec<u8> {
        fn pick<'a>(rng: &mut crate::test_util::Rng, from: &[&'a str]) -> &'a str {
            from[rng.index(from.len())]
        }
        let mut head = if is_request {
            let method = pick(rng, &["GET", "POST", "M-SEARCH", "CONNECT", "HEAD"]);
            let target = pick(rng, &["/", "/a?b=c", "*", "/x/y.json", "http://h/p"]);
            let version = pick(rng, &["HTTP/1.1", "HTTP/1.0"]);
            format!("{method} {target} {version}\r\n")
        } else {
            let version = pick(rng, &["HTTP/1.1", "HTTP/1.0"]);
            let status = pick(
                rng,
                &["200 OK", "101 Switching Protocols", "404", "204 ", "304  x"],
            );
            format!("{version} {status}\r\n")
        };
        for _ in 0..rng.below(6) {
            let name = pick(
                rng,
                &[
                    "Host",
                    "traceparent",
                    "X-B3-TraceId",
                    "Content-Length",
                    "content-length",
                    "Transfer-Encoding",
                    "Upgrade",
                    "Cookie",
                    "X_Odd-Name",
                ],
            );
            let value = pick(
                rng,
                &[
                    "",
                    " ",
                    "5",
                    " 5 ",
                    "1, 1",
                    "chunked",
                    "gzip, chunked",
                    "h2c",
                    "a b",
                ],
            );
            let sep = pick(rng, &[":", ": ", ":  "]);
            head.push_str(&format!("{name}{sep}{value}\r\n"));
        }
        head.push_str("\r\n");
        let mut head = head.into_bytes();
        if rng.pct(70) {
            let at = rng.index(head.len());
            let bytes = [
                b' ', b'\t', b'\r', b'\n', 0, 0x7f, 0xe9, b':', b'(', b'A', b'0',
            ];
            head[at] = bytes[rng.index(bytes.len())];
        }
        head
    }

    #[test]
    fn whenever_the_one_pass_reads_a_head_httparse_reads_it_the_same() {
        let mut rng = crate::test_util::Rng::new(11);
        let mut read = 0;
        for i in 0..40_000 {
            let is_request = i % 2 == 0;
            let keep: &dyn Fn(&str) -> bool = if i % 4 < 2 { &keep_tp } else { &keep_all };
            let mut bytes = random_head(&mut rng, is_request);
            // What follows a head is not looked at.
            bytes.extend_from_slice(b"\n\r\nGET / HTTP/1.1\r\n\r\n");
            let plain = if is_request {
                request(&bytes, keep)
            } else {
                response(&bytes, keep)
            };
            let Some((head, end)) = plain else { continue };
            read += 1;
            let shown = String::from_utf8_lossy(&bytes);
            assert_eq!(find_head_end([0, 0], &bytes), Some(end), "{shown:?}");
            let general = if is_request {
                parse_request(&bytes[..end], keep)
            } else {
                parse_response(&bytes[..end], keep)
            };
            assert_eq!(general, Ok(head), "{shown:?}");
        }
        // Many heads (unchanged ones, and some changed) are read in one pass: the comparison
        // is not an empty one.
        assert!(read > 10_000, "{read}");
    }

    #[test]
    fn the_end_of_the_head_is_found_and_what_follows_ignored() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/";
        let (head, end) = response(bytes, &keep_all).unwrap();
        assert_eq!((head.status, end), (200, bytes.len() - 5));
    }

    #[test]
    fn other_shapes_are_left_to_the_general_way() {
        let requests: [&[u8]; 11] = [
            b"GET  /a HTTP/1.1\r\n\r\n",
            b"GET /a  HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\n\n",
            b"GET /a HTTP/1.1\r\nHost: x\n\r\n",
            b"GET /a HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost:\tx\r\n\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n",
            b"GET /a HTTP/2.0\r\n\r\n",
            // Incomplete: no empty line yet.
            b"GET /a HTTP/1.1\r\nHost: x\r\n",
        ];
        for head in requests {
            assert!(
                request(head, &keep_all).is_none(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let responses: [&[u8]; 4] = [
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n\tc\r\n\r\n",
        ];
        for head in responses {
            assert!(
                response(head, &keep_all).is_none(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let many: String = std::iter::once("GET / HTTP/1.1\r\n".to_string())
            .chain((0..=STACK_HEADERS).map(|i| format!("H{i}: v\r\n")))
            .chain(std::iter::once("\r\n".to_string()))
            .collect();
        assert!(request(many.as_bytes(), &keep_all).is_none());
    }
}
