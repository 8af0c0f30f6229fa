//! Kernel cost per captured message (c): single-threaded write/read loops on a loopback
//! socket, a pipe and a tmpfs file, timed with and without the agent.

use std::{
    fs,
    io::{Read, Seek, SeekFrom, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::host::{nproc, pin_process, pin_this_thread, signal};

/// A 100-byte HTTP request and a 100-byte response, so the agent parses every exchange.
fn pingpong_messages() -> (Vec<u8>, Vec<u8>) {
    let pad = |prefix: &str, suffix: &str| {
        let mut s = prefix.to_owned();
        while s.len() + suffix.len() < 100 {
            s.push('x');
        }
        s.push_str(suffix);
        s.into_bytes()
    };
    let req = pad("GET /ping HTTP/1.1\r\nHost: b\r\nX-Pad: ", "\r\n\r\n");
    let body = "pong";
    let resp = pad(
        "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Pad: ",
        &format!("\r\n\r\n{body}"),
    );
    (req, resp)
}

/// ns per socket operation (write or read) of a single-threaded loopback ping-pong: each round
/// trip is 4 captured messages (client write, server read, server write, client read).
fn socket_pingpong(n: u64) -> Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let mut a = TcpStream::connect(l.local_addr()?)?;
    let (mut b, _) = l.accept()?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    let (req, resp) = pingpong_messages();
    let mut buf = [0u8; 100];
    // Warm-up.
    for _ in 0..1000 {
        a.write_all(&req)?;
        b.read_exact(&mut buf)?;
        b.write_all(&resp)?;
        a.read_exact(&mut buf)?;
    }
    let t = Instant::now();
    for _ in 0..n {
        a.write_all(&req)?;
        b.read_exact(&mut buf)?;
        b.write_all(&resp)?;
        a.read_exact(&mut buf)?;
    }
    let ns = t.elapsed().as_nanos() as f64 / (4 * n) as f64;
    a.shutdown(Shutdown::Both).ok();
    Ok(ns)
}

/// ns per write or read on a pipe (100 bytes each).
fn pipe_pingpong(n: u64) -> Result<f64> {
    let (mut r, mut w) = std::io::pipe()?;
    let msg = [b'p'; 100];
    let mut buf = [0u8; 100];
    for _ in 0..1000 {
        w.write_all(&msg)?;
        r.read_exact(&mut buf)?;
    }
    let t = Instant::now();
    for _ in 0..n {
        w.write_all(&msg)?;
        r.read_exact(&mut buf)?;
    }
    Ok(t.elapsed().as_nanos() as f64 / (2 * n) as f64)
}

/// ns per write or read on a regular file (tmpfs when /dev/shm exists): write 100 bytes,
/// seek back, read them, seek back (the seeks are counted in, they are not traced).
fn file_pingpong(n: u64) -> Result<f64> {
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("traceid-bench-{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let msg = [b'f'; 100];
    let mut buf = [0u8; 100];
    let mut once = |f: &mut fs::File| -> std::io::Result<()> {
        f.write_all(&msg)?;
        f.seek(SeekFrom::Start(0))?;
        f.read_exact(&mut buf)?;
        f.seek(SeekFrom::Start(0))?;
        Ok(())
    };
    for _ in 0..1000 {
        once(&mut f)?;
    }
    let t = Instant::now();
    for _ in 0..n {
        once(&mut f)?;
    }
    let ns = t.elapsed().as_nanos() as f64 / (2 * n) as f64;
    drop(f);
    let _ = fs::remove_file(&path);
    Ok(ns)
}

/// Each kernel-cost loop runs as this many blocks; the fastest block counts (other work on a
/// shared machine only ever adds time).
pub const BLOCKS: u64 = 5;

/// The fastest of [`BLOCKS`] runs of `f` over `n / BLOCKS` iterations each, in ns per op.
fn best_of(n: u64, f: fn(u64) -> Result<f64>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..BLOCKS {
        best = best.min(f((n / BLOCKS).max(1))?);
    }
    Ok(best)
}

/// ns per op of the kernel-cost loops.
pub struct KernelCost {
    pub socket: f64,
    pub pipe: f64,
    pub file: f64,
    /// The socket loop again with the agent stopped (SIGSTOP): the kernel programs still copy
    /// every message into the ring buffer, but nobody is woken up and nothing is parsed.
    pub socket_paused: Option<f64>,
    pub pinned: bool,
}

/// Round trips of the paused-agent loop: 4 records of 176 bytes each must fit in the 16 MiB
/// ring buffer (about 95,000 records) with the warm-ups (1000 per block), or the rest would be
/// dropped.
pub const PAUSED_PINGPONGS: u64 = 15_000;

/// The pipe, file and socket loops (ns per op), in a thread of their own pinned to CPU 0 when
/// there are two CPUs or more (the agent is then pinned to the others meanwhile), so that the
/// figure is the time spent in the syscalls, not time the agent's userspace took from the core.
/// Pipe and file go first, while the agent is idle.
pub fn kernel_cost(pingpongs: u64, agent: Option<u32>) -> Result<KernelCost> {
    let cpus = nproc();
    let pinned = cpus >= 2;
    if pinned {
        if let Some(pid) = agent {
            pin_process(pid, &format!("1-{}", cpus - 1));
        }
    }
    // Let the agent finish what the previous load left in the ring buffer.
    thread::sleep(Duration::from_secs(1));
    let r = thread::spawn(move || -> Result<KernelCost> {
        let ok = pinned && pin_this_thread(0);
        let pipe = best_of(pingpongs, pipe_pingpong)?;
        let file = best_of(pingpongs, file_pingpong)?;
        let socket = best_of(pingpongs, socket_pingpong)?;
        let socket_paused = match agent {
            Some(pid) => {
                thread::sleep(Duration::from_secs(1));
                signal(pid, "-STOP");
                let r = best_of(PAUSED_PINGPONGS.min(pingpongs), socket_pingpong);
                signal(pid, "-CONT");
                Some(r?)
            }
            None => None,
        };
        Ok(KernelCost {
            socket,
            pipe,
            file,
            socket_paused,
            pinned: ok,
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the ping-pong thread panicked"))?;
    if pinned {
        if let Some(pid) = agent {
            pin_process(pid, &format!("0-{}", cpus - 1));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingpong_messages_are_100_bytes() {
        let (req, resp) = pingpong_messages();
        assert_eq!(req.len(), 100);
        assert_eq!(resp.len(), 100);
        assert!(req.ends_with(b"\r\n\r\n"));
        assert!(resp.ends_with(b"\r\n\r\npong"));
    }
}
