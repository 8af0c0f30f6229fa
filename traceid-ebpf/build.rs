//! Sets `bpf_target_arch` (the architecture of the kernel the programs will run on) the way
//! aya-ebpf does for itself: from `--cfg bpf_target_arch`, `AYA_BPF_TARGET_ARCH`, or the
//! build host. `src/regs.rs` reads the saved user registers with that architecture's layout.
fn main() -> aya_build::Result<()> {
    aya_build::emit_bpf_target_arch_cfg()
}
