//! Kernel struct offsets from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations yet, so the agent reads the offsets the kernel programs
//! need from `/sys/kernel/btf/vmlinux` and writes them into the programs before loading them.

use btf_rs::{Btf, Type};
use traceid_common::KernelOffsets;

/// Where the running kernel describes its own types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(thiserror::Error, Debug)]
pub enum BtfError {
    #[error("reading kernel BTF at {VMLINUX_BTF}: {0}")]
    Read(String),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(&'static str),
    #[error("kernel BTF: struct {0} has no field {1}")]
    NoField(&'static str, &'static str),
    #[error("kernel BTF: {0}.{1} is a bitfield or not byte aligned")]
    Unaligned(&'static str, &'static str),
}

/// Reads every offset of [`KernelOffsets`] from the running kernel's BTF.
pub fn kernel_offsets() -> Result<KernelOffsets, BtfError> {
    let btf = Btf::from_file(VMLINUX_BTF).map_err(|e| BtfError::Read(e.to_string()))?;
    let f = |s: &'static str, m: &'static str| field_offset(&btf, s, m);
    // A socket's inode sits next to it in `struct socket_alloc`.
    let socket_ino =
        f("socket_alloc", "vfs_inode")? + f("inode", "i_ino")? - f("socket_alloc", "socket")?;
    Ok(KernelOffsets {
        task_files: f("task_struct", "files")?,
        files_fdt: f("files_struct", "fdt")?,
        fdt_max_fds: f("fdtable", "max_fds")?,
        fdt_fd: f("fdtable", "fd")?,
        file_private_data: f("file", "private_data")?,
        socket_sk: f("socket", "sk")?,
        skc_family: f("sock_common", "skc_family")?,
        skc_daddr: f("sock_common", "skc_daddr")?,
        skc_rcv_saddr: f("sock_common", "skc_rcv_saddr")?,
        skc_dport: f("sock_common", "skc_dport")?,
        skc_num: f("sock_common", "skc_num")?,
        skc_v6_daddr: f("sock_common", "skc_v6_daddr")?,
        skc_v6_rcv_saddr: f("sock_common", "skc_v6_rcv_saddr")?,
        // `struct sock` starts with `struct sock_common __sk_common`, so sock_common offsets
        // are also offsets into `struct sock`.
        sk_protocol: f("sock", "sk_protocol")?,
        sk_type: f("sock", "sk_type")?,
        socket_file: f("socket", "file")?,
        socket_ino,
        valid: 1,
    })
}

/// Byte offset of `member` in `struct name`, looking through anonymous structs and unions.
pub fn field_offset(btf: &Btf, name: &'static str, member: &'static str) -> Result<u32, BtfError> {
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|_| BtfError::NoStruct(name))?;
    for ty in types {
        if let Type::Struct(s) = ty {
            if let Some(bits) = find_member(btf, &s, member, 0) {
                if bits % 8 != 0 {
                    return Err(BtfError::Unaligned(name, member));
                }
                return Ok(bits / 8);
            }
            return Err(BtfError::NoField(name, member));
        }
    }
    Err(BtfError::NoStruct(name))
}

/// Bit offset of `member`, searching anonymous members depth-first (bounded by BTF nesting).
fn find_member(btf: &Btf, s: &btf_rs::Struct, member: &str, base: u32) -> Option<u32> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            if m.bitfield_size().is_some_and(|b| b != 0) {
                return None;
            }
            return Some(base + m.bit_offset());
        }
        if name.is_empty() {
            let mut ty = btf.resolve_chained_type(m).ok()?;
            // Skip typedefs and qualifiers to the anonymous struct/union.
            for _ in 0..8 {
                match ty {
                    Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) => {
                        let inner = ty.as_btf_type()?;
                        ty = btf.resolve_chained_type(inner).ok()?;
                    }
                    _ => break,
                }
            }
            if let Type::Struct(inner) | Type::Union(inner) = ty {
                if let Some(off) = find_member(btf, &inner, member, base + m.bit_offset()) {
                    return Some(off);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reads this machine's kernel BTF: the offsets must exist and be plausible.
    #[test]
    fn offsets_from_running_kernel() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI machines have kernel BTF"
            );
            eprintln!("skipped: no {VMLINUX_BTF} on this machine");
            return;
        }
        let o = kernel_offsets().expect("offsets");
        assert_eq!(o.valid, 1);
        // sock_common fields sit in the first 64 bytes; ports follow addresses.
        assert!(o.skc_daddr < 64 && o.skc_rcv_saddr < 64 && o.skc_family < 64);
        assert!(o.skc_dport > o.skc_daddr);
        assert!(
            o.skc_num == o.skc_dport + 2,
            "skc_num follows skc_dport in skc_portpair"
        );
        assert!(o.sk_protocol > 64 && o.sk_type > 64);
        assert_ne!(o.task_files, 0);
        assert!(
            o.socket_file < o.socket_sk,
            "socket.file precedes socket.sk"
        );
        assert!(o.socket_ino > o.socket_sk, "the inode follows the socket");
    }
}
