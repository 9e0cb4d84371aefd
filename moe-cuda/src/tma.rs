//! Tensor maps for the TMA unit (`cp.async.bulk.tensor`): the 3-D K-major E4M3 operands of the
//! wgmma GEMM, `(K, rows, E)` with a box of `(128, box_rows, 1)` bytes and the 128-byte swizzle.
//!
//! [`TiledE4m3`] is the host-side description, validated against the driver's rules before any
//! device work (pure, tested without a GPU); [`TiledE4m3::encode`] asks the driver
//! (`cuTensorMapEncodeTiled`) for the 128-byte [`TensorMap`] that a kernel takes by value as a
//! `const __grid_constant__` parameter. The map holds the buffer's raw address: it is built
//! by the launch functions from a borrowed buffer, and lives no longer than that borrow.

use cudarc::driver::sys::{
    self, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::DeviceRepr;
use moe_core::{DeviceError, ProblemError};

/// The driver's `CUtensorMap`: 128 opaque bytes, 64-byte aligned (`TmaMap` in gemm_wgmma.cu).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct TensorMap(pub(crate) [u64; 16]);

// SAFETY: `TensorMap` is `#[repr(C, align(64))]` over 16 `u64` (128 bytes, no padding, every bit
// pattern valid): exactly the layout of the kernels' `struct __align__(64) TmaMap { u64
// opaque[16]; }` and of the driver's `CUtensorMap`, so passing it by value as a kernel parameter
// copies the 128 bytes the kernel reads.
unsafe impl DeviceRepr for TensorMap {}

/// Bytes of the box's inner dimension: one 128-wide K block of E4M3, the 128-byte swizzle's span.
pub(crate) const BOX_K: usize = 128;

/// The largest global stride the TMA unit takes (exclusive): 2^40 bytes.
const MAX_STRIDE: u64 = 1 << 40;
/// The largest global dimension the TMA unit takes: 2^32 elements.
const MAX_DIM: u64 = 1 << 32;

/// A `(E, rows, K)` row-major E4M3 tensor seen by the TMA unit as the 3-D array `(K, rows, E)`
/// (innermost first), read in boxes of `(128, box_rows, 1)` with the 128-byte swizzle; boxes
/// past `rows` are zero-filled, and no box reaches into the next expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TiledE4m3 {
    dims: [u64; 3],
    strides: [u64; 2],
    boxes: [u32; 3],
}

impl TiledE4m3 {
    /// Checks the driver's rules for tensor `name` of `e` experts of `rows x k` bytes: every
    /// dimension in `[1, 2^32]`, `k` a multiple of 128 (so the row stride is a multiple of 16),
    /// both strides below 2^40, and a box of `box_rows` in `[1, 256]`.
    pub(crate) fn new(name: &'static str, e: usize, rows: usize, k: usize, box_rows: usize) -> Result<Self, ProblemError> {
        let bad = |what: String| ProblemError::Unsupported {
            what: format!("moe-cuda wgmma GEMM: tensor `{name}`: {what}"),
        };
        assert!((1..=256).contains(&box_rows), "moe-cuda bug: a TMA box of {box_rows} rows");
        for (dim, v) in [("K", k), ("rows", rows), ("E", e)] {
            if v == 0 || v as u64 > MAX_DIM {
                return Err(bad(format!("dimension `{dim}` = {v} is outside [1, 2^32] (a TMA limit)")));
            }
        }
        if k % BOX_K != 0 {
            return Err(bad(format!("dimension `K` = {k} is not a multiple of {BOX_K}")));
        }
        let row = k as u64;
        let expert = row.saturating_mul(rows as u64);
        if expert >= MAX_STRIDE {
            return Err(bad(format!(
                "one expert holds {rows} x {k} bytes, at least 2^40 (the largest TMA stride)"
            )));
        }
        Ok(TiledE4m3 {
            dims: [k as u64, rows as u64, e as u64],
            strides: [row, expert],
            boxes: [BOX_K as u32, box_rows as u32, 1],
        })
    }

    /// The bytes one box moves (the mbarrier transaction count of one load, out-of-bounds rows
    /// included).
    #[cfg(test)]
    pub(crate) fn box_bytes(&self) -> u32 {
        self.boxes.iter().product()
    }

    /// The tensor map of this layout at device address `ptr`.
    ///
    /// `ptr` must be the start of a device buffer of at least `E·rows·K` bytes that outlives
    /// every launch taking the map (the launch functions borrow it for that long); it must be
    /// 16-byte aligned (every cudarc allocation is 256-byte aligned).
    pub(crate) fn encode(&self, ptr: sys::CUdeviceptr, op: &'static str) -> Result<TensorMap, DeviceError> {
        assert!(ptr % 16 == 0, "moe-cuda bug: a TMA base address {ptr:#x} not 16-byte aligned");
        let elem_strides = [1u32; 3];
        let mut raw = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
        // SAFETY: `raw` is a writable, suitably aligned (the cudarc type is 128-byte aligned)
        // CUtensorMap; the dims, strides (rank - 1 entries), box and element-stride arrays hold
        // 3, 2, 3 and 3 values, as rank 3 requires, and live through the call; `new` checked
        // the driver's rules (dims in [1, 2^32], strides multiples of 16 below 2^40, boxes in
        // [1, 256] with an inner box of 128 bytes for the 128-byte swizzle). The driver only
        // records `ptr`; it dereferences nothing here.
        let res = unsafe {
            sys::cuTensorMapEncodeTiled(
                raw.as_mut_ptr(),
                CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
                3,
                ptr as *mut std::ffi::c_void,
                self.dims.as_ptr(),
                self.strides.as_ptr(),
                self.boxes.as_ptr(),
                elem_strides.as_ptr(),
                CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        res.result().map_err(|e| DeviceError::Driver {
            op,
            detail: format!("cuTensorMapEncodeTiled {self:?}: {e:?}"),
        })?;
        // SAFETY: the call succeeded, so the driver wrote the whole map (and `raw` was zeroed
        // before anyway: every bit pattern of 16 u64 is a valid value).
        let map = unsafe { raw.assume_init() };
        Ok(TensorMap(map.opaque))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gemm_operand_is_a_3d_array_with_k_innermost() {
        let m = TiledE4m3::new("a", 8, 300, 7168, 64).unwrap();
        assert_eq!(m.dims, [7168, 300, 8]);
        assert_eq!(m.strides, [7168, 300 * 7168]);
        assert_eq!(m.boxes, [128, 64, 1]);
        assert_eq!(m.box_bytes(), 8192);
        assert!(m.strides.iter().all(|s| s % 16 == 0));
        assert_eq!(TiledE4m3::new("b", 1, 4096, 128, 128).unwrap().box_bytes(), 16384);
    }

    #[test]
    fn driver_rules_are_checked_by_name() {
        let msg = |r: Result<TiledE4m3, ProblemError>| match r {
            Err(ProblemError::Unsupported { what }) => what,
            other => panic!("expected a rejection, got {other:?}"),
        };
        assert!(msg(TiledE4m3::new("a", 1, 4, 200, 64)).contains("tensor `a`: dimension `K` = 200"));
        assert!(msg(TiledE4m3::new("a", 0, 4, 128, 64)).contains("dimension `E` = 0"));
        assert!(msg(TiledE4m3::new("b", 1, (1 << 32) + 1, 128, 64)).contains("dimension `rows`"));
        // One expert of 2^32 rows x 256 bytes is 2^40 bytes: past the largest stride.
        assert!(msg(TiledE4m3::new("a", 2, 1 << 32, 256, 64)).contains("2^40"));
        assert!(TiledE4m3::new("a", 2, (1 << 32) - 1, 128, 64).is_ok());
    }

    #[test]
    fn the_map_has_the_drivers_size_and_alignment() {
        assert_eq!(std::mem::size_of::<TensorMap>(), 128);
        assert_eq!(std::mem::align_of::<TensorMap>(), 64);
        assert_eq!(std::mem::size_of::<sys::CUtensorMap>(), 128);
    }
}
