//! The census as the live loop takes it: one netlink socket kept open.

use super::census::{CensusError, CensusSocket};
use super::census_record;
use super::Sysctls;

/// One netlink socket reused from census to census (opened on first use, reopened after a
/// failure).
#[derive(Debug, Default)]
pub struct LiveCensus {
    socket: Option<CensusSocket>,
    /// Sockets in the last census: the next record is sized after it.
    last_len: usize,
}

impl LiveCensus {
    /// Takes a census of at most `max` TIME_WAIT sockets at `ts_ns` (CLOCK_MONOTONIC), written
    /// straight into its record as the kernel hands the sockets over: with 130,000 TIME_WAIT
    /// sockets the record is 4.5 MiB, where a list of them first would add 8 MiB more.
    pub fn take(&mut self, max: usize, ts_ns: u64) -> Result<Vec<u8>, CensusError> {
        let socket = match &mut self.socket {
            Some(s) => s,
            None => self.socket.insert(CensusSocket::open()?),
        };
        // TIME_WAIT sockets come and go over a minute: room for the last census's and a
        // sixteenth more.
        let expected = (self.last_len + self.last_len / 16).min(max);
        let mut record = census_record::Encoder::new(ts_ns, expected);
        match socket.dump_each(max, &mut |s| record.push(&s)) {
            Ok(truncated) => {
                self.last_len = record.len();
                Ok(record.finish(truncated, &Sysctls::read()))
            }
            Err(e) => {
                self.socket = None;
                Err(e)
            }
        }
    }
}
