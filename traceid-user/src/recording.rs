//! `traceid record` / `traceid replay`: raw ring-buffer records on disk.
//!
//! Format (version 1), little-endian:
//! - magic `TRACEID\0`, u32 version, u32 reserved, i64 CLOCK_REALTIME - CLOCK_MONOTONIC (ns);
//! - then records: u32 length, then that many bytes (exactly what the kernel wrote).
//!
//! Secrets never reach the disk: the values of `Authorization`, `Proxy-Authorization`,
//! `Cookie` and `Set-Cookie` header lines in captured payloads are overwritten with `*`
//! (same length, so every length the engine relies on is unchanged) before writing.

use std::io::{self, Read, Write};

use traceid_common::DataEvent;

pub const MAGIC: &[u8; 8] = b"TRACEID\0";
pub const VERSION: u32 = 1;
/// Largest record accepted when reading: the kernel's records are at most 16 KiB plus a
/// header, the agent's census records up to 36 bytes per TIME_WAIT socket (1,000,000 by
/// default: 36 MB).
pub const MAX_RECORD: u32 = 1 << 26;

/// Header names whose values are redacted (lowercase).
pub const REDACTED: &[&[u8]] = &[
    b"authorization",
    b"proxy-authorization",
    b"cookie",
    b"set-cookie",
];

#[derive(thiserror::Error, Debug)]
pub enum RecordingError {
    #[error("not a traceid recording (bad magic at offset 0)")]
    BadMagic,
    #[error("recording version {0} is not supported (this traceid reads version {VERSION})")]
    Version(u32),
    #[error("recording is truncated at offset {offset}: {what}")]
    Truncated { offset: u64, what: &'static str },
    #[error("recording is corrupt at offset {offset}: record length {len} exceeds {MAX_RECORD}")]
    Corrupt { offset: u64, len: u32 },
    #[error("reading the recording: {0}")]
    Io(#[from] io::Error),
}

pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, realtime_offset_ns: i128) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&(realtime_offset_ns as i64).to_le_bytes())?;
        Ok(Writer { out })
    }

    pub fn write(&mut self, raw: &[u8]) -> io::Result<()> {
        let mut rec = raw.to_vec();
        redact_record(&mut rec);
        self.out.write_all(&(rec.len() as u32).to_le_bytes())?;
        self.out.write_all(&rec)
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Redacts secret header values inside a data record's payload, in place.
pub fn redact_record(rec: &mut [u8]) {
    let start = std::mem::size_of::<DataEvent>();
    if let Ok(crate::event::Event::Data(..)) = crate::event::decode(rec) {
        if let Some(payload) = rec.get_mut(start..) {
            redact_payload(payload);
        }
    }
}

/// Overwrites the values of secret header lines with '*'. A line is a header line when it
/// starts the payload or follows "\n".
pub fn redact_payload(p: &mut [u8]) {
    let mut line_start = 0;
    while line_start < p.len() {
        let end = p[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(p.len(), |i| line_start + i);
        let line = &p[line_start..end];
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = &line[..colon];
            if REDACTED
                .iter()
                .any(|r| name.trim_ascii().eq_ignore_ascii_case(r))
            {
                for b in &mut p[line_start + colon + 1..end] {
                    if *b != b'\r' && *b != b' ' {
                        *b = b'*';
                    }
                }
            }
        }
        line_start = end + 1;
    }
}

pub struct Reader<R: Read> {
    input: R,
    offset: u64,
    pub realtime_offset_ns: i128,
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> Result<Self, RecordingError> {
        let mut head = [0u8; 24];
        read_exact_at(&mut input, &mut head, 0, "file header")?;
        if &head[..8] != MAGIC {
            return Err(RecordingError::BadMagic);
        }
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(RecordingError::Version(version));
        }
        let off = i64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
        Ok(Reader {
            input,
            offset: 24,
            realtime_offset_ns: off as i128,
        })
    }

    /// The next record, None at a clean end of file.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, RecordingError> {
        let mut len = [0u8; 4];
        match self.input.read(&mut len[..1])? {
            0 => return Ok(None),
            _ => read_exact_at(&mut self.input, &mut len[1..], self.offset, "record length")?,
        }
        let n = u32::from_le_bytes(len);
        if n > MAX_RECORD {
            return Err(RecordingError::Corrupt {
                offset: self.offset,
                len: n,
            });
        }
        let at = self.offset;
        self.offset += 4;
        let mut rec = vec![0u8; n as usize];
        read_exact_at(&mut self.input, &mut rec, at, "record body")?;
        self.offset += u64::from(n);
        Ok(Some(rec))
    }
}

fn read_exact_at<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    offset: u64,
    what: &'static str,
) -> Result<(), RecordingError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => RecordingError::Truncated { offset, what },
        _ => RecordingError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::events::{get, Stream, C, OK, TP};

    #[test]
    fn redacts_secret_values_keeping_lengths() {
        let mut p = b"GET / HTTP/1.1\r\nAuthorization: Bearer abc\r\ncookie: a=b\r\nTraceparent: 00-x\r\n\r\n".to_vec();
        let before = p.len();
        redact_payload(&mut p);
        let s = String::from_utf8(p).unwrap();
        assert_eq!(s.len(), before);
        assert!(!s.contains("abc") && !s.contains("a=b"), "{s}");
        assert!(s.contains("Authorization: ****** ***\r\n"), "{s}");
        assert!(s.contains("Traceparent: 00-x"));
    }

    #[test]
    fn replay_equals_live_and_errors_name_offsets() {
        let c = C {
            pid: 1,
            fd: 3,
            ts: 5,
            comm: "svc",
            role: traceid_common::ROLE_SERVER,
        };
        let mut s = Stream::default();
        for i in 0..10 {
            s.data(c, 1, false, &get(&format!("/r{i}"), &[("traceparent", TP)]));
            s.data(c, 1, true, OK);
        }
        let live = s.run();
        let mut w = Writer::new(Vec::new(), 0).unwrap();
        for r in &s.records {
            w.write(r).unwrap();
        }
        let file = w.finish().unwrap();
        assert!(
            !String::from_utf8_lossy(&file).contains("secret"),
            "Authorization value on disk"
        );
        let mut rd = Reader::new(&file[..]).unwrap();
        let mut recs = Vec::new();
        while let Some(r) = rd.next_record().unwrap() {
            recs.push(r);
        }
        let replayed = crate::test_util::events::run_records(&recs);
        assert_eq!(live, replayed);
        assert_eq!(live.len(), 10);

        // Truncation in a record body names the record's offset.
        let cut = &file[..file.len() - 3];
        let mut rd = Reader::new(cut).unwrap();
        let err = loop {
            match rd.next_record() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("truncation not detected"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                err,
                RecordingError::Truncated {
                    what: "record body",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("offset"));
        assert!(matches!(
            Reader::new(&b"NOTATRACE-FILE-AT-ALL!!!"[..]),
            Err(RecordingError::BadMagic)
        ));
        assert!(matches!(
            Reader::new(&b"TRAC"[..]),
            Err(RecordingError::Truncated { offset: 0, .. })
        ));
        let mut corrupt = file[..24].to_vec();
        corrupt.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut rd = Reader::new(&corrupt[..]).unwrap();
        assert!(matches!(
            rd.next_record(),
            Err(RecordingError::Corrupt { offset: 24, .. })
        ));
    }
}
