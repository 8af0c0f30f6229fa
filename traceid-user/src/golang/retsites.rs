//! The RET instructions of a function, found by decoding its machine code.
//!
//! Go programs cannot take uretprobes: the kernel replaces the return address on the stack,
//! and the Go runtime moves and copies goroutine stacks (and walks them for GC and
//! tracebacks), so a hijacked return address crashes the program. A plain uprobe on each
//! RET instruction sees every return instead. A RET byte (0xC3) also occurs inside other
//! instructions (immediates, displacements), so the code is decoded from the entry, one
//! instruction after the other; a uprobe placed inside an instruction would corrupt it.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};

/// Why the RET sites cannot be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RetSitesError {
    #[error("undecodable x86-64 instruction at {address:#x}: the instruction stream is not known")]
    Undecodable { address: u64 },
}

/// Addresses of the near RET instructions in `code`, the bytes of a function that starts
/// at `entry`. Go pads between functions with INT3, which decodes; anything undecodable
/// (a cut instruction at the end included) is an error rather than a guess.
pub fn ret_addresses(code: &[u8], entry: u64) -> Result<Vec<u64>, RetSitesError> {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut rets = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return Err(RetSitesError::Undecodable {
                address: instruction.ip(),
            });
        }
        if instruction.mnemonic() == Mnemonic::Ret {
            rets.push(instruction.ip());
        }
    }
    Ok(rets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c3_inside_an_instruction_is_not_a_ret() {
        let code = [
            0x48, 0xc7, 0xc0, 0xc3, 0x00, 0x00, 0x00, // mov rax, 0xc3
            0x48, 0x8b, 0x83, 0xc3, 0x00, 0x00, 0x00, // mov rax, [rbx+0xc3]
            0x74, 0x01, // je +1
            0xc3, // ret
            0xc2, 0x08, 0x00, // ret 8
            0xcc, 0xcc, // int3 padding
        ];
        assert_eq!(ret_addresses(&code, 0x1000), Ok(vec![0x1010, 0x1011]));
    }

    #[test]
    fn a_cut_or_invalid_instruction_is_an_error() {
        // mov rax, imm32 cut after two bytes of its immediate.
        assert_eq!(
            ret_addresses(&[0xc3, 0x48, 0xc7, 0xc0, 0xc3, 0x00], 0x10),
            Err(RetSitesError::Undecodable { address: 0x11 })
        );
        // 0x06 (push es) does not exist in 64-bit mode.
        assert_eq!(
            ret_addresses(&[0x90, 0x06, 0xc3], 0),
            Err(RetSitesError::Undecodable { address: 1 })
        );
        assert_eq!(ret_addresses(&[], 0), Ok(vec![]));
    }
}
