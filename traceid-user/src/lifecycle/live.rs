//! The census as the live loop takes it: one netlink socket kept open.

use super::census::{Census, CensusError, CensusSocket};

/// One netlink socket reused from census to census (opened on first use, reopened after a
/// failure).
#[derive(Debug, Default)]
pub struct LiveCensus {
    socket: Option<CensusSocket>,
}

impl LiveCensus {
    /// Takes a census of at most `max` TIME_WAIT sockets.
    pub fn take(&mut self, max: usize) -> Result<Census, CensusError> {
        let socket = match &mut self.socket {
            Some(s) => s,
            None => self.socket.insert(CensusSocket::open()?),
        };
        let census = socket.dump(max);
        if census.is_err() {
            self.socket = None;
        }
        census
    }
}
