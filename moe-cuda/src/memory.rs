//! Host ↔ device memory: uploads, zeroed allocations, downloads, synchronization, and the
//! bit casts between the host element types and the raw words the kernels take.
//!
//! Every driver failure is converted to [`DeviceError`] here (through `driver_err`), with the
//! name of the operation that issued it. Nothing else in the crate calls cudarc's copy or
//! allocation methods directly.
//!
//! Downloads into caller buffers are staged: [`fetch`] copies a device buffer into a fresh host
//! `Vec`, and the entry points copy the `Vec`s into the caller's slices only once every download
//! of the call (and the final synchronization) succeeded, so a failing copy never leaves one
//! output written and another not.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use half::bf16;
use moe_core::{DeviceError, ScaleBuf, Scales, ScalesMut};

use crate::device::{driver_err, Device};

/// A new device buffer holding a copy of `data` (at least one element is allocated, so an
/// empty `data` gives a one-element buffer of undefined content that no launch reads).
pub(crate) fn upload<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    data: &[T],
    op: &'static str,
) -> Result<CudaSlice<T>, DeviceError> {
    if data.is_empty() {
        return alloc(stream, 0, op);
    }
    stream.clone_htod(data).map_err(driver_err(op))
}

/// Copies `src` into the existing device buffer `dst` of exactly the same length.
pub(crate) fn upload_into<T: DeviceRepr>(
    stream: &Arc<CudaStream>,
    src: &[T],
    dst: &mut CudaSlice<T>,
    op: &'static str,
) -> Result<(), DeviceError> {
    assert_eq!(src.len(), dst.len(), "moe-cuda bug: upload length");
    stream.memcpy_htod(src, dst).map_err(driver_err(op))
}

/// A zero-filled device buffer of `n` elements (at least one, so that every buffer has an
/// address).
pub(crate) fn alloc<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    n: usize,
    op: &'static str,
) -> Result<CudaSlice<T>, DeviceError> {
    stream.alloc_zeros::<T>(n.max(1)).map_err(driver_err(op))
}

/// The whole of `src` as a new host `Vec` (a staged download: the caller copies it into its
/// output only once every download of the call succeeded).
pub(crate) fn fetch<T: DeviceRepr>(stream: &Arc<CudaStream>, src: &CudaSlice<T>, op: &'static str) -> Result<Vec<T>, DeviceError> {
    stream.clone_dtoh(src).map_err(driver_err(op))
}

/// Hands one call's single staged download to the caller: runs `fetch_a` (device → host `Vec`)
/// and `finish` (the final synchronization), and copies into `dst_a` only if both succeeded.
pub(crate) fn commit1<A: Copy>(
    fetch_a: impl FnOnce() -> Result<Vec<A>, DeviceError>,
    dst_a: &mut [A],
    finish: impl FnOnce() -> Result<(), DeviceError>,
) -> Result<(), DeviceError> {
    let a = fetch_a()?;
    finish()?;
    dst_a.copy_from_slice(&a);
    Ok(())
}

/// Hands one call's two staged downloads to the caller: runs `fetch_a`, `fetch_b` and `finish`,
/// and only if all three succeeded copies into `dst_a` and `dst_b`. On any error neither
/// destination is written (never the first output without the second).
pub(crate) fn commit2<A: Copy, B: Copy>(
    fetch_a: impl FnOnce() -> Result<Vec<A>, DeviceError>,
    dst_a: &mut [A],
    fetch_b: impl FnOnce() -> Result<Vec<B>, DeviceError>,
    dst_b: &mut [B],
    finish: impl FnOnce() -> Result<(), DeviceError>,
) -> Result<(), DeviceError> {
    let a = fetch_a()?;
    let b = fetch_b()?;
    finish()?;
    dst_a.copy_from_slice(&a);
    dst_b.copy_from_slice(&b);
    Ok(())
}

/// Waits for everything enqueued on `stream` and reports any asynchronous error of the context.
pub(crate) fn sync(dev: &Device, stream: &Arc<CudaStream>, op: &'static str) -> Result<(), DeviceError> {
    stream.synchronize().map_err(driver_err(op))?;
    dev.ctx().check_err().map_err(driver_err(op))
}

/// bf16 values as their raw bits (what the kernels take).
pub(crate) fn bf16_bits(x: &[bf16]) -> &[u16] {
    bytemuck::cast_slice(x)
}

/// bf16 values as their raw bits, mutably.
pub(crate) fn bf16_bits_mut(x: &mut [bf16]) -> &mut [u16] {
    bytemuck::cast_slice_mut(x)
}

/// Scales as raw 32-bit words (f32 bits or packed i32 words).
pub(crate) fn scale_words<'a>(s: &Scales<'a>) -> &'a [u32] {
    match s {
        Scales::F32(v) => bytemuck::cast_slice(v),
        Scales::Packed(v) => bytemuck::cast_slice(v),
    }
}

/// Mutable scales as raw 32-bit words.
pub(crate) fn scale_words_mut<'a>(s: &'a mut ScalesMut<'_>) -> &'a mut [u32] {
    match s {
        ScalesMut::F32(v) => bytemuck::cast_slice_mut(v),
        ScalesMut::Packed(v) => bytemuck::cast_slice_mut(v),
    }
}

/// An owned scale buffer as raw 32-bit words, mutably.
pub(crate) fn scale_buf_words_mut(s: &mut ScaleBuf) -> &mut [u32] {
    match s {
        ScaleBuf::F32(v) => bytemuck::cast_slice_mut(v),
        ScaleBuf::Packed(v) => bytemuck::cast_slice_mut(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> DeviceError {
        DeviceError::Driver {
            op: "test",
            detail: "injected".into(),
        }
    }

    #[test]
    fn a_failing_second_download_writes_neither_output() {
        let (mut q, mut s) = (vec![9u8; 3], vec![7u32; 2]);
        let r = commit2(|| Ok(vec![1u8, 2, 3]), &mut q, || Err(failed()), &mut s, || Ok(()));
        assert_eq!(r, Err(failed()));
        assert_eq!((q.as_slice(), s.as_slice()), (&[9u8, 9, 9][..], &[7u32, 7][..]));
    }

    #[test]
    fn a_failing_final_synchronization_writes_no_output() {
        let (mut q, mut s) = (vec![9u8; 3], vec![7u32; 2]);
        assert!(commit2(|| Ok(vec![1u8, 2, 3]), &mut q, || Ok(vec![4u32, 5]), &mut s, || Err(failed())).is_err());
        assert_eq!((q.as_slice(), s.as_slice()), (&[9u8, 9, 9][..], &[7u32, 7][..]));
        let mut d = vec![1u16; 2];
        assert!(commit1(|| Ok(vec![5u16, 6]), &mut d, || Err(failed())).is_err());
        assert_eq!(d, [1, 1]);
    }

    #[test]
    fn successful_downloads_write_both_outputs() {
        let (mut q, mut s) = (vec![9u8; 3], vec![7u32; 2]);
        commit2(|| Ok(vec![1u8, 2, 3]), &mut q, || Ok(vec![4u32, 5]), &mut s, || Ok(())).unwrap();
        assert_eq!((q, s), (vec![1, 2, 3], vec![4, 5]));
        let mut d = vec![1u16; 2];
        commit1(|| Ok(vec![5u16, 6]), &mut d, || Ok(())).unwrap();
        assert_eq!(d, [5, 6]);
    }

    #[test]
    fn bit_casts_keep_every_bit() {
        let x = [bf16::from_bits(0x7F81), bf16::from_bits(0x8000), bf16::ONE];
        assert_eq!(bf16_bits(&x), &[0x7F81, 0x8000, 0x3F80]);
        let f = [1.5f32, -0.0];
        assert_eq!(scale_words(&Scales::F32(&f)), &[1.5f32.to_bits(), 0x8000_0000]);
        let p = [-1i32, 7];
        assert_eq!(scale_words(&Scales::Packed(&p)), &[u32::MAX, 7]);
        let mut b = ScaleBuf::Packed(vec![3, 4]);
        scale_buf_words_mut(&mut b)[1] = 0xFFFF_FFFF;
        assert_eq!(b, ScaleBuf::Packed(vec![3, -1]));
    }
}
