//! `traceid record` / `traceid replay`: raw ring-buffer records on disk.
//!
//! Format (version 2), little-endian:
//! - magic `TRACEID\0`, u32 version, u32 redaction flags ([`redaction`]), i64
//!   CLOCK_REALTIME - CLOCK_MONOTONIC (ns);
//! - then records: u32 length, then that many bytes (what the kernel wrote, secrets masked).
//!
//! Version 1 is the same with the flags field reserved (zero): its writer masked a secret
//! header's value only when the whole header line came in one write, and kept query strings.
//! Both versions are read.
//!
//! Secrets never reach the disk: the values of `Authorization`, `Proxy-Authorization`,
//! `Cookie` and `Set-Cookie` and the query strings of request lines are overwritten with `*`
//! wherever their bytes fall in the stream ([`redact`]), with the same length, so every
//! length the engine relies on is unchanged.

mod redact;

use std::io::{self, BufRead, Write};

pub use redact::{Redactor, SENSITIVE_HEADERS};

pub const MAGIC: &[u8; 8] = b"TRACEID\0";
/// The version this build writes.
pub const VERSION: u32 = 2;
/// The oldest version this build reads.
pub const OLDEST_VERSION: u32 = 1;
/// Largest record accepted when reading: the kernel's records are at most 16 KiB plus a
/// header, the agent's census records up to 36 bytes per TIME_WAIT socket (1,000,000 by
/// default: 36 MB).
pub const MAX_RECORD: u32 = 1 << 26;

/// The file header's flags: which redaction rules the writer applied.
pub mod redaction {
    /// Values of [`super::SENSITIVE_HEADERS`] are masked wherever their bytes fall: split
    /// across writes, across records, cut by the capture window.
    pub const HEADER_VALUES_IN_STREAM: u32 = 1 << 0;
    /// Query strings of request lines are masked (from after `?` to the space before the
    /// version).
    pub const QUERY_STRINGS: u32 = 1 << 1;
    /// HTTP/2: the same values and `:path` queries are masked inside HPACK header blocks
    /// (`redact/h2.rs`).
    pub const HTTP2_HEADER_BLOCKS: u32 = 1 << 2;
    /// What this build's writer applies.
    pub const ALL: u32 = HEADER_VALUES_IN_STREAM | QUERY_STRINGS | HTTP2_HEADER_BLOCKS;
}

/// What went wrong with a recording; offsets are byte offsets into the file.
#[derive(thiserror::Error, Debug)]
pub enum RecordingError {
    #[error("not a traceid recording (bad magic at offset 0)")]
    BadMagic,
    #[error(
        "recording version {0} (offset 8) is not supported (this traceid reads versions {OLDEST_VERSION} to {VERSION})"
    )]
    Version(u32),
    #[error("recording is truncated at offset {offset}: {what}")]
    Truncated { offset: u64, what: &'static str },
    #[error("recording is corrupt at offset {offset}: record length {len} exceeds {MAX_RECORD}")]
    Corrupt { offset: u64, len: u32 },
    #[error("a record of {len} bytes cannot be recorded: the format allows at most {MAX_RECORD}")]
    RecordTooLarge { len: usize },
    #[error("reading the recording at offset {offset}")]
    Read { offset: u64, source: io::Error },
    #[error("writing the recording at offset {offset}")]
    Write { offset: u64, source: io::Error },
}

/// Writes a recording: the file header, then records as they come, secrets masked.
pub struct Writer<W: Write> {
    out: W,
    /// Bytes written so far: where the next write lands.
    offset: u64,
    redactor: Redactor,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, realtime_offset_ns: i128) -> Result<Self, RecordingError> {
        let mut w = Writer {
            out,
            offset: 0,
            redactor: Redactor::default(),
        };
        w.put(MAGIC)?;
        w.put(&VERSION.to_le_bytes())?;
        w.put(&redaction::ALL.to_le_bytes())?;
        w.put(&(realtime_offset_ns as i64).to_le_bytes())?;
        Ok(w)
    }

    /// Appends one raw ring-buffer record, secrets masked. Records of an unfinished HTTP/2
    /// header block are written once it ends (or at [`Writer::finish`]), in order.
    pub fn write(&mut self, raw: &[u8]) -> Result<(), RecordingError> {
        u32::try_from(raw.len())
            .ok()
            .filter(|&n| n <= MAX_RECORD)
            .ok_or(RecordingError::RecordTooLarge { len: raw.len() })?;
        self.redactor.push(raw.to_vec());
        while let Some(rec) = self.redactor.pop() {
            self.put_record(&rec)?;
        }
        Ok(())
    }

    /// Flushes and hands back the output.
    pub fn finish(mut self) -> Result<W, RecordingError> {
        self.redactor.finish();
        while let Some(rec) = self.redactor.pop() {
            self.put_record(&rec)?;
        }
        let offset = self.offset;
        self.out
            .flush()
            .map_err(|source| RecordingError::Write { offset, source })?;
        Ok(self.out)
    }

    fn put_record(&mut self, rec: &[u8]) -> Result<(), RecordingError> {
        // The length was checked when the record came in.
        self.put(&(rec.len() as u32).to_le_bytes())?;
        self.put(rec)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        let offset = self.offset;
        self.out
            .write_all(bytes)
            .map_err(|source| RecordingError::Write { offset, source })?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

/// Reads a recording back, record by record. Buffered input, so a clean end of file (between
/// records) can be told from a truncated record.
pub struct Reader<R: BufRead> {
    input: R,
    /// Bytes consumed so far: where the next read starts.
    offset: u64,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC (ns) on the recording host.
    pub realtime_offset_ns: i128,
    /// The file's format version.
    pub version: u32,
    /// The [`redaction`] rules its writer applied.
    pub redaction: u32,
}

impl<R: BufRead> Reader<R> {
    /// Reads and checks the file header.
    pub fn new(input: R) -> Result<Self, RecordingError> {
        let mut rd = Reader {
            input,
            offset: 0,
            realtime_offset_ns: 0,
            version: 0,
            redaction: 0,
        };
        if &rd.take::<8>("file header")? != MAGIC {
            return Err(RecordingError::BadMagic);
        }
        rd.version = u32::from_le_bytes(rd.take("file header")?);
        if !(OLDEST_VERSION..=VERSION).contains(&rd.version) {
            return Err(RecordingError::Version(rd.version));
        }
        // Version 1 reserved this field (zero): none of today's rules applied.
        rd.redaction = u32::from_le_bytes(rd.take("file header")?);
        rd.realtime_offset_ns = i64::from_le_bytes(rd.take("file header")?).into();
        Ok(rd)
    }

    /// Redaction rules this build applies that the recording's writer did not: secrets of
    /// these kinds may be in the file.
    pub fn redaction_missing(&self) -> Vec<&'static str> {
        [
            (
                redaction::HEADER_VALUES_IN_STREAM,
                "secret header values split across writes",
            ),
            (redaction::QUERY_STRINGS, "query strings"),
            (
                redaction::HTTP2_HEADER_BLOCKS,
                "secret header values and queries in HTTP/2 header blocks",
            ),
        ]
        .into_iter()
        .filter(|(flag, _)| self.redaction & flag == 0)
        .map(|(_, what)| what)
        .collect()
    }

    /// The next record, None at a clean end of file.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, RecordingError> {
        if self.at_end()? {
            return Ok(None);
        }
        let at = self.offset;
        let len = u32::from_le_bytes(self.take("record length")?);
        if len > MAX_RECORD {
            return Err(RecordingError::Corrupt { offset: at, len });
        }
        let mut rec = vec![0u8; len as usize];
        self.fill(&mut rec, "record body")?;
        Ok(Some(rec))
    }

    /// True when the input ends exactly here (between records), without consuming anything.
    fn at_end(&mut self) -> Result<bool, RecordingError> {
        loop {
            match self.input.fill_buf() {
                Ok(buffered) => return Ok(buffered.is_empty()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(RecordingError::Read {
                        offset: self.offset,
                        source,
                    })
                }
            }
        }
    }

    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], RecordingError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    /// Fills `buf`; a short input is `Truncated` at the offset where `what` starts.
    fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), RecordingError> {
        let offset = self.offset;
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => RecordingError::Truncated { offset, what },
            _ => RecordingError::Read { offset, source: e },
        })?;
        self.offset += buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::events::{get, Stream, C, OK, TP};

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

    /// The Go probes' records go to disk like every kernel record: a replay links by
    /// goroutine as the live run did.
    #[test]
    fn replay_links_by_goroutine_as_live() {
        let served = |fd, ts, role| C {
            pid: 2,
            fd,
            ts,
            comm: "gosvc",
            role,
        };
        let (a, b) = (
            served(3, 1, traceid_common::ROLE_SERVER),
            served(4, 2, traceid_common::ROLE_SERVER),
        );
        let out = served(5, 3, traceid_common::ROLE_CLIENT);
        let mut s = Stream::default();
        s.go_serve(a, 1, 10);
        s.go_serve(b, 1, 20);
        s.data(a, 1, false, &get("/a", &[("traceparent", TP)]));
        s.data(b, 2, false, &get("/b", &[("traceparent", TP)]));
        s.go_spawn(2, 3, 20, 21);
        s.go_call(out, 3, 21);
        s.data(out, 4, true, &get("/call", &[]));
        s.data(out, 4, false, OK);
        let live = s.run();
        let mut w = Writer::new(Vec::new(), 0).unwrap();
        for r in &s.records {
            w.write(r).unwrap();
        }
        let file = w.finish().unwrap();
        let mut rd = Reader::new(&file[..]).unwrap();
        let mut recs = Vec::new();
        while let Some(r) = rd.next_record().unwrap() {
            recs.push(r);
        }
        // Data records have their secrets masked; the Go records come back byte for byte.
        let go_records = |records: &[Vec<u8>]| -> Vec<Vec<u8>> {
            records
                .iter()
                .filter(|r| {
                    let kind = u16::from_ne_bytes([r[0], r[1]]);
                    (traceid_common::kind::GO_SERVE..=traceid_common::kind::GO_SPAWN)
                        .contains(&kind)
                })
                .cloned()
                .collect()
        };
        assert_eq!(go_records(&recs).len(), 4);
        assert_eq!(go_records(&recs), go_records(&s.records));
        assert_eq!(crate::test_util::events::run_records(&recs), live);
        let call = live.iter().find(|r| &*r.path == "/call").expect("the call");
        let inbound = call.inbound.as_ref().expect("linked");
        assert_eq!(&*inbound.path, "/b");
        assert_eq!(inbound.evidence, crate::record::Evidence::Goroutine);
        assert_eq!(inbound.confidence, crate::record::Confidence::Certain);
    }

    /// A recording of `records` dummy records of `len` bytes each (no data events: nothing
    /// to redact).
    fn recording_of(records: usize, len: usize) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), -7).unwrap();
        for i in 0..records {
            w.write(&vec![i as u8; len]).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn reader_reports_where_the_file_goes_wrong() {
        let file = recording_of(2, 10);
        assert_eq!(file.len(), 24 + 2 * (4 + 10));
        let mut rd = Reader::new(&file[..]).unwrap();
        assert_eq!(rd.realtime_offset_ns, -7);
        assert_eq!(rd.next_record().unwrap(), Some(vec![0; 10]));
        assert_eq!(rd.next_record().unwrap(), Some(vec![1; 10]));
        assert!(rd.next_record().unwrap().is_none(), "clean end of file");

        // Cut inside the second record's length field (offset 38).
        let mut rd = Reader::new(&file[..40]).unwrap();
        rd.next_record().unwrap();
        let err = rd.next_record().unwrap_err();
        assert!(
            matches!(
                err,
                RecordingError::Truncated {
                    offset: 38,
                    what: "record length"
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "recording is truncated at offset 38: record length"
        );

        let mut newer = file.clone();
        newer[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let err = Reader::new(&newer[..]).err().unwrap();
        assert!(
            matches!(err, RecordingError::Version(v) if v == VERSION + 1),
            "{err}"
        );
    }

    #[test]
    fn the_header_says_which_rules_applied_and_version_1_still_reads() {
        let file = recording_of(1, 10);
        let rd = Reader::new(&file[..]).unwrap();
        assert_eq!((rd.version, rd.redaction), (VERSION, redaction::ALL));
        assert!(rd.redaction_missing().is_empty());

        let mut v1 = file.clone();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        v1[12..16].copy_from_slice(&0u32.to_le_bytes());
        let mut rd = Reader::new(&v1[..]).unwrap();
        assert_eq!(
            rd.redaction_missing(),
            [
                "secret header values split across writes",
                "query strings",
                "secret header values and queries in HTTP/2 header blocks"
            ]
        );
        assert_eq!(rd.next_record().unwrap(), Some(vec![0; 10]));
    }

    /// Accepts `room` bytes, then fails every write.
    struct FullDisk {
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writer_errors_name_the_offset_and_refuse_oversized_records() {
        // Room for the file header and one 10-byte record (4 + 10), not for a second.
        let mut w = Writer::new(FullDisk { room: 24 + 14 + 2 }, 0).unwrap();
        w.write(&[0; 10]).unwrap();
        let err = w.write(&[0; 10]).unwrap_err();
        assert!(
            matches!(err, RecordingError::Write { offset: 38, .. }),
            "{err}"
        );
        assert_eq!(err.to_string(), "writing the recording at offset 38");
        let cause = std::error::Error::source(&err).expect("the I/O error is the source");
        assert_eq!(
            cause.to_string(),
            io::Error::from(io::ErrorKind::StorageFull).to_string()
        );

        let mut w = Writer::new(Vec::new(), 0).unwrap();
        let err = w.write(&vec![0; MAX_RECORD as usize + 1]).unwrap_err();
        assert!(
            matches!(err, RecordingError::RecordTooLarge { .. }),
            "{err}"
        );
        // Nothing of the refused record reached the file: it still reads back clean.
        let file = w.finish().unwrap();
        assert!(Reader::new(&file[..])
            .unwrap()
            .next_record()
            .unwrap()
            .is_none());
    }
}
