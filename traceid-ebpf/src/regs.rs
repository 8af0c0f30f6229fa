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
//! one `arch::read` function.

use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs};

/// What the returning syscall was called with.
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    /// The first argument: the fd for every call the programs follow.
    pub arg0: u64,
    /// The second argument: a buffer, an iovec array, a msghdr or a sockaddr.
    pub arg1: u64,
}

#[inline(always)]
fn read_kernel<T: Copy>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address and fails cleanly.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[cfg(bpf_target_arch = "x86_64")]
mod arch {
    /// `struct pt_regs` from `si` to `di` (arch/x86/include/asm/ptrace.h): the second and
    /// first syscall arguments. `ax` holds the return value by now; `di` and `si` are intact.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct SiDi {
        si: u64,
        di: u64,
    }

    /// Offset of `si` in `struct pt_regs`.
    const SI_OFFSET: u64 = 13 * 8;

    #[inline(always)]
    pub fn read(regs: u64) -> Option<super::SyscallArgs> {
        let r: SiDi = super::read_kernel(regs + SI_OFFSET)?;
        Some(super::SyscallArgs {
            arg0: r.di,
            arg1: r.si,
        })
    }
}

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    /// Offsets in `struct pt_regs` (arch/arm64/include/asm/ptrace.h): `regs[1]`, and
    /// `orig_x0`, where the kernel keeps the first argument (`regs[0]` holds the return value
    /// by now).
    const X1_OFFSET: u64 = 8;
    const ORIG_X0_OFFSET: u64 = 34 * 8;

    #[inline(always)]
    pub fn read(regs: u64) -> Option<super::SyscallArgs> {
        Some(super::SyscallArgs {
            arg0: super::read_kernel(regs + ORIG_X0_OFFSET)?,
            arg1: super::read_kernel(regs + X1_OFFSET)?,
        })
    }
}

#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!(
    "traceid-ebpf reads syscall arguments from saved registers on x86_64 and aarch64 only: \
     add this architecture's layout to src/regs.rs"
);

impl SyscallArgs {
    /// The arguments of the current task's syscall, from its saved user registers.
    #[inline(always)]
    pub fn current() -> Option<SyscallArgs> {
        // SAFETY: both helpers work on the current task, alive while its program runs; the
        // result is only used as an address for bpf_probe_read_kernel.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
        arch::read(regs)
    }
}
