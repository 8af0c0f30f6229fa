//! What both Go probe families (`go`: goroutine linking, `go_tls`: crypto/tls plaintext) read
//! the same way: the register ABI, user memory, and goroutines as map keys.
//!
//! Go ≥ 1.17 passes integer arguments and results in registers (ABIInternal: RAX, RBX, RCX… on
//! amd64, X0, X1, X2… on arm64) and keeps the current goroutine's `g` in a register reserved
//! for it (R14, X28).

use aya_ebpf::{helpers::bpf_probe_read_user, programs::ProbeContext};

/// The Go register ABI's integer registers the probes read, from the probe's saved user
/// registers.
#[derive(Clone, Copy)]
pub struct GoRegs {
    /// First integer argument / result (amd64 RAX, arm64 X0).
    pub arg0: u64,
    /// Second (RBX, X1).
    pub arg1: u64,
    /// Third (RCX, X2).
    pub arg2: u64,
    /// The current goroutine's `g` (R14, X28).
    pub g: u64,
}

#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
pub fn go_regs(ctx: &ProbeContext) -> GoRegs {
    // SAFETY: a uprobe's context is the `struct pt_regs` of the probed user thread, which the
    // verifier lets the program load from directly.
    let regs = unsafe { &*ctx.regs };
    GoRegs {
        arg0: regs.rax,
        arg1: regs.rbx,
        arg2: regs.rcx,
        g: regs.r14,
    }
}

#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
pub fn go_regs(ctx: &ProbeContext) -> GoRegs {
    // arm64's context is `struct user_pt_regs`: `regs[31]` first, 8 bytes each.
    let regs = ctx.regs as *const u64;
    // SAFETY: loads of `regs[0]`, `regs[1]`, `regs[2]` and `regs[28]` from the probe's
    // context, all within `user_pt_regs`.
    unsafe {
        GoRegs {
            arg0: *regs,
            arg1: *regs.add(1),
            arg2: *regs.add(2),
            g: *regs.add(28),
        }
    }
}

/// A value of the probed process's memory; None for a null address or one that cannot be
/// read.
#[inline(always)]
pub fn read_user<T: Copy>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_user copies with fault handling: a bad address gives Err, never
    // a fault; the types read are plain integers, valid for any bytes.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// The id of the goroutine whose `g` is at `g`, its `goid` field `goid_offset` bytes in.
#[inline(always)]
pub fn goid(g: u64, goid_offset: u32) -> Option<u64> {
    read_user::<u64>(g.checked_add(u64::from(goid_offset))?)
}

/// A goroutine of a process: a map key (goroutine ids are never reused within a process).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Goroutine {
    pub pid: u32,
    pub _pad: u32,
    pub goid: u64,
}

impl Goroutine {
    #[inline(always)]
    pub fn new(pid: u32, goid: u64) -> Goroutine {
        Goroutine { pid, _pad: 0, goid }
    }
}
