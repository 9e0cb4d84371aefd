//! Comparison helpers: poison patterns, bit-exact comparison with a readable first difference,
//! the bf16 ulp, and `calc_diff`.

use moe_core::{bf16, ScaleBuf, ScaleFormat};

/// The byte every E4M3 output is filled with before a call.
pub const POISON_U8: u8 = 0xA5;
/// The bits every f32 scale output is filled with (a signalling NaN pattern).
pub const POISON_F32: u32 = 0x7FA5_A5A5;
/// The word every packed scale output is filled with.
pub const POISON_I32: i32 = 0x5A5A_5A5A;
/// The bits every bf16 output is filled with.
pub const POISON_BF16: u16 = 0xA5A5;
/// The value every `counts` output is filled with.
pub const POISON_COUNT: i32 = -7777;

/// A poisoned E4M3 buffer.
pub fn poison_u8(n: usize) -> Vec<u8> {
    vec![POISON_U8; n]
}

/// A poisoned bf16 buffer.
pub fn poison_bf16(n: usize) -> Vec<bf16> {
    vec![bf16::from_bits(POISON_BF16); n]
}

/// Poisoned scales in the storage kind of `fmt`.
pub fn poison_scales(fmt: ScaleFormat, n: usize) -> ScaleBuf {
    if fmt.is_packed() {
        ScaleBuf::Packed(vec![POISON_I32; n])
    } else {
        ScaleBuf::F32(vec![f32::from_bits(POISON_F32); n])
    }
}

/// Raw bits of anything these suites compare.
pub trait Bits: Copy {
    /// The bit pattern, widened.
    fn bits(self) -> u64;
}
impl Bits for u8 {
    fn bits(self) -> u64 {
        self as u64
    }
}
impl Bits for i32 {
    fn bits(self) -> u64 {
        self as u32 as u64
    }
}
impl Bits for u32 {
    fn bits(self) -> u64 {
        self as u64
    }
}
impl Bits for f32 {
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
}
impl Bits for bf16 {
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
}

/// Compares two buffers bit for bit; the error names the tensor, the first differing index,
/// both bit patterns and how many elements differ.
pub fn same_bits<T: Bits>(what: &str, dut: &[T], reference: &[T]) -> Result<(), String> {
    if dut.len() != reference.len() {
        return Err(format!("{what}: length {} vs reference {}", dut.len(), reference.len()));
    }
    let mut first = None;
    let mut n = 0usize;
    for (i, (a, b)) in dut.iter().zip(reference).enumerate() {
        if a.bits() != b.bits() {
            n += 1;
            first.get_or_insert(i);
        }
    }
    match first {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: {n} of {} elements differ; first at index {i}: backend {:#x}, reference {:#x}",
            dut.len(),
            dut[i].bits(),
            reference[i].bits()
        )),
    }
}

/// Bit-exact comparison of scale buffers (f32 bits or packed words).
pub fn same_scales(what: &str, dut: &ScaleBuf, reference: &ScaleBuf) -> Result<(), String> {
    match (dut, reference) {
        (ScaleBuf::F32(a), ScaleBuf::F32(b)) => same_bits(what, a, b),
        (ScaleBuf::Packed(a), ScaleBuf::Packed(b)) => same_bits(what, a, b),
        _ => Err(format!("{what}: storage kinds differ")),
    }
}

pub use moe_core::{calc_diff, calc_diff_bf16, ulp_bf16};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bits_reports_the_first_difference() {
        let e = same_bits("q", &[1u8, 2, 3], &[1u8, 5, 6]).unwrap_err();
        assert!(e.contains("2 of 3") && e.contains("index 1"), "{e}");
        assert!(same_bits("s", &[f32::NAN], &[f32::NAN]).is_ok());
    }
}
