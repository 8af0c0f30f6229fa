//! Connections that existed before the agent started.
//!
//! Long-lived keep-alive connections (a service's pool to its database or to the next hop)
//! were accepted or connected before the kernel programs were attached, so the kernel's table
//! of known sockets would never learn them. This walks /proc once at start-up: every
//! process's socket fds, matched by inode with the TCP tables of the process's network
//! namespace, gives the (pid, fd) and endpoints of every established connection. The role is
//! `server` when the local port is one the namespace listens on.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use traceid_common::{kind, ConnEvent, EventHeader, COMM_LEN, ROLE_CLIENT, ROLE_SERVER};

/// One seeded connection, as the record the engine will be fed.
#[derive(Debug, Clone)]
pub struct SeededConn {
    pub event: ConnEvent,
    /// The socket's inode number (`socket:[N]`), how the kernel programs recognise it.
    pub inode: u64,
}

/// A row of /proc/net/tcp{,6}.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LISTEN: u8 = 10;

/// Parses the text of /proc/net/tcp or /proc/net/tcp6. Malformed rows are skipped.
pub fn parse_proc_net_tcp(text: &str) -> Vec<TcpRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let _sl = f.next()?;
            let local = parse_endpoint(f.next()?)?;
            let remote = parse_endpoint(f.next()?)?;
            let state = u8::from_str_radix(f.next()?, 16).ok()?;
            // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, then inode.
            let inode = f.nth(5)?.parse().ok()?;
            Some(TcpRow {
                local,
                remote,
                state,
                inode,
            })
        })
        .collect()
}

/// "0100007F:1F90" (IPv4, each 32-bit word in host order) or the 32-hex-digit IPv6 form.
fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(addr, 16).ok()?.to_ne_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn link_target_number(path: &str, prefix: &str) -> Option<u64> {
    let t = fs::read_link(path).ok()?;
    let t = t.to_str()?;
    t.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
}

/// The TCP sockets of one network namespace, by inode, and its listening ports.
struct NetnsTables {
    by_inode: HashMap<u64, TcpRow>,
    listening: HashSet<u16>,
}

fn read_netns_tables(pid: u32) -> NetnsTables {
    let mut by_inode = HashMap::new();
    let mut listening = HashSet::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for row in parse_proc_net_tcp(&text) {
            if row.state == TCP_LISTEN {
                listening.insert(row.local.port());
            } else if row.state == TCP_ESTABLISHED || row.state == TCP_CLOSE_WAIT {
                by_inode.insert(row.inode, row);
            }
        }
    }
    NetnsTables {
        by_inode,
        listening,
    }
}

/// Every established TCP connection held by a process other than `skip_pid`.
pub fn existing_connections(skip_pid: u32) -> Vec<SeededConn> {
    let now = super::monotonic_ns();
    let mut tables: HashMap<u64, NetnsTables> = HashMap::new();
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == skip_pid {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let Some(netns) = link_target_number(&format!("/proc/{pid}/ns/net"), "net:[") else {
            continue;
        };
        let mut comm_bytes = [0u8; COMM_LEN];
        if let Ok(c) = fs::read_to_string(format!("/proc/{pid}/comm")) {
            let c = c.trim_end().as_bytes();
            let n = c.len().min(COMM_LEN - 1);
            comm_bytes[..n].copy_from_slice(&c[..n]);
        }
        for fd_entry in fds.flatten() {
            let Some(fd) = fd_entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Some(inode) = link_target_number(&format!("/proc/{pid}/fd/{fd}"), "socket:[")
            else {
                continue;
            };
            let t = tables
                .entry(netns)
                .or_insert_with(|| read_netns_tables(pid));
            let Some(row) = t.by_inode.get(&inode) else {
                continue;
            };
            let role = if t.listening.contains(&row.local.port()) {
                ROLE_SERVER
            } else {
                ROLE_CLIENT
            };
            out.push(SeededConn {
                event: conn_event(pid, fd, now, comm_bytes, role, row.local, row.remote),
                inode,
            });
        }
    }
    out
}

fn conn_event(
    pid: u32,
    fd: i32,
    now: u64,
    comm: [u8; COMM_LEN],
    role: u8,
    local: SocketAddr,
    remote: SocketAddr,
) -> ConnEvent {
    let (family, local_addr, remote_addr) = match (local.ip(), remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            let mut la = [0u8; 16];
            let mut ra = [0u8; 16];
            la[..4].copy_from_slice(&l.octets());
            ra[..4].copy_from_slice(&r.octets());
            (2, la, ra)
        }
        (l, r) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
            (10, v6(l), v6(r))
        }
    };
    ConnEvent {
        header: EventHeader {
            kind: kind::CONN_OPEN,
            _pad0: 0,
            pid,
            tid: pid,
            fd,
            ts_ns: now,
            conn_ts_ns: now,
            comm,
        },
        role,
        flags: 0,
        family,
        local_port: local.port(),
        remote_port: remote.port(),
        local_addr,
        remote_addr,
        // /proc does not give the kernel's socket pointer: state changes of seeded
        // connections stay unattributed.
        sock: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_rows() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1\n\
   garbage line\n";
        let rows = parse_proc_net_tcp(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].local.to_string(), "127.0.0.1:8080");
        assert_eq!(rows[0].state, TCP_LISTEN);
        assert_eq!(rows[1].remote.to_string(), "127.0.0.1:54321");
        assert_eq!(rows[1].inode, 12346);
        let v6 = "header\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        let rows = parse_proc_net_tcp(v6);
        assert_eq!(rows[0].local.to_string(), "[::1]:8080");
    }

    // A connection made by this test process before anything looks is found, with its role.
    #[test]
    fn finds_this_process_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let conns = existing_connections(0);
        let me = std::process::id();
        let mine: Vec<_> = conns
            .iter()
            .filter(|c| c.event.header.pid == me)
            .filter_map(|c| crate::event::endpoints(&c.event).map(|e| (c.event.role, e)))
            .collect();
        let client_local = client.local_addr().unwrap();
        assert!(
            mine.contains(&(ROLE_CLIENT, (client_local, addr))),
            "client side not found in {mine:?}"
        );
        assert!(
            mine.contains(&(ROLE_SERVER, (addr, client_local))),
            "server side not found in {mine:?}"
        );
    }
}
