//! The arguments of the syscall that is returning, read from the user registers the kernel
//! saved when the syscall was entered.
//!
//! At syscall exit the saved registers still hold the original arguments (the return value
//! goes to the register the caller reads it from, and on architectures where that is also an
//! argument register the kernel keeps a copy of the first argument). So the exit programs need
//! no entry program and no table of saved arguments, and they also see a call that was
//! already blocked when the programs were attached.
//!
//! The register layout is per architecture (`bpf_target_arch`, set by build.rs): adding one is
//! one `arch` module.

use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_task_pt_regs};

/// What the returning syscall was called with.
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    /// The syscall's number (this architecture's; see `nr`).
    pub nr: u64,
    /// The first argument: the fd for every call the programs follow.
    pub arg0: u64,
    /// The second argument: a buffer, an iovec array, a msghdr or a sockaddr.
    pub arg1: u64,
}

/// A saved register: a plain load through the BTF-typed `struct pt_regs *` that
/// `bpf_task_pt_regs` returns, which the verifier checks against the kernel's type and makes
/// fault-tolerant (far cheaper than a bpf_probe_read_kernel call).
#[inline(always)]
fn load(regs: *const u8, off: usize) -> u64 {
    // SAFETY: see above; volatile keeps it one 8-byte load of exactly this register.
    unsafe { core::ptr::read_volatile(regs.add(off) as *const u64) }
}

#[cfg(bpf_target_arch = "x86_64")]
mod arch {
    /// Offsets in `struct pt_regs` (arch/x86/include/asm/ptrace.h) of the first and second
    /// syscall arguments. `ax` holds the return value by now; `di` and `si` are intact.
    const DI: usize = 14 * 8;
    const SI: usize = 13 * 8;
    /// `orig_ax`: the syscall number (`ax` is the return value by now).
    const ORIG_AX: usize = 15 * 8;

    /// Syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
    pub mod nr {
        pub const READ: u64 = 0;
        pub const WRITE: u64 = 1;
        pub const READV: u64 = 19;
        pub const WRITEV: u64 = 20;
        pub const SENDFILE: u64 = 40;
        pub const SENDTO: u64 = 44;
        pub const RECVFROM: u64 = 45;
        pub const SENDMSG: u64 = 46;
        pub const RECVMSG: u64 = 47;
    }

    #[inline(always)]
    pub fn read(regs: *const u8) -> super::SyscallArgs {
        super::SyscallArgs {
            nr: super::load(regs, ORIG_AX),
            arg0: super::load(regs, DI),
            arg1: super::load(regs, SI),
        }
    }
}

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    /// Offsets in `struct pt_regs` (arch/arm64/include/asm/ptrace.h): `orig_x0`, where the
    /// kernel keeps the first argument (`regs[0]` holds the return value by now), and
    /// `regs[1]`.
    const ORIG_X0: usize = 34 * 8;
    const X1: usize = 8;
    /// `syscallno` (s32), right after `orig_x0`.
    const SYSCALLNO: usize = 35 * 8;

    /// Syscall numbers (include/uapi/asm-generic/unistd.h).
    pub mod nr {
        pub const READ: u64 = 63;
        pub const WRITE: u64 = 64;
        pub const READV: u64 = 65;
        pub const WRITEV: u64 = 66;
        pub const SENDFILE: u64 = 71;
        pub const SENDTO: u64 = 206;
        pub const RECVFROM: u64 = 207;
        pub const SENDMSG: u64 = 211;
        pub const RECVMSG: u64 = 212;
    }

    #[inline(always)]
    pub fn read(regs: *const u8) -> super::SyscallArgs {
        super::SyscallArgs {
            // Little-endian: the low half of the 8-byte load is the s32 `syscallno`.
            nr: super::load(regs, SYSCALLNO) & 0xffff_ffff,
            arg0: super::load(regs, ORIG_X0),
            arg1: super::load(regs, X1),
        }
    }
}

#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!(
    "traceid-ebpf reads syscall arguments from saved registers on x86_64 and aarch64 only: \
     add this architecture's layout to src/regs.rs"
);

pub use arch::nr;

impl SyscallArgs {
    /// The arguments of the current task's syscall, from its saved user registers.
    #[inline(always)]
    pub fn current() -> SyscallArgs {
        // SAFETY: both helpers work on the current task, alive while its program runs.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
        arch::read(regs)
    }
}
