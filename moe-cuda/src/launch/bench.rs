//! The launches of the benchmark harness's own kernels (`kernels/bench.cu`): the read-only
//! streaming ceiling and the spin kernel. Part of the launch module, so that every launch of the
//! crate stays in `launch`.

use cudarc::driver::CudaSlice;
use moe_core::DeviceError;

use super::{need, Args, Config, Launcher};
use crate::kernels::KernelId;

/// Threads per block of `moe_bench_read` (its `__launch_bounds__`).
const READ_THREADS: u32 = 512;

impl Launcher<'_> {
    /// `moe_bench_read(const uint4* src, long long n16, u32 magic, u32* sink)`: reads the first
    /// `n16` 16-byte words of `src` once.
    ///
    /// `magic` must be a value whose XOR-fold the data never produces (the caller fills `src`
    /// so); the kernel then writes nothing.
    pub(crate) fn bench_read(&self, src: &CudaSlice<u8>, n16: usize, magic: u32, sink: &mut CudaSlice<u32>) -> Result<(), DeviceError> {
        need(src, n16 * 16, "src");
        need(sink, 1, "sink");
        let mut a = Args::new(self.stream);
        a.buf(src).i64(n16).u32(magic).buf_mut(sink);
        // Four blocks of 512 threads per SM: enough loads in flight to saturate HBM.
        let grid = self.dev.sm_count() * 4;
        // SAFETY: arguments match the C signature above in order and type (a device pointer
        // read as `const uint4*`, a 64-bit count, an unsigned int, a device pointer to u32).
        // cudarc allocations are at least 256-byte aligned, so the uint4 reads are aligned; the
        // kernel reads src[i] for i < n16 only, and `src` holds n16 * 16 bytes (asserted); it
        // writes at most sink[0], and `sink` holds at least one element (asserted). 512 threads
        // per block match its `__launch_bounds__(512)`.
        unsafe {
            self.launch(
                KernelId::Bench,
                "moe_bench_read",
                Config::plain(grid, READ_THREADS),
                a,
                "bench read",
            )
        }
    }

    /// `moe_bench_copy(const uint4* src, uint4* dst, long long n16)`: copies the first `n16`
    /// 16-byte words of `src` to `dst`.
    pub(crate) fn bench_copy(&self, src: &CudaSlice<u8>, dst: &mut CudaSlice<u8>, n16: usize) -> Result<(), DeviceError> {
        need(src, n16 * 16, "src");
        need(dst, n16 * 16, "dst");
        let mut a = Args::new(self.stream);
        a.buf(src).buf_mut(dst).i64(n16);
        let grid = self.dev.sm_count() * 4;
        // SAFETY: arguments match the C signature above in order and type (two device pointers
        // used as `uint4*`, a 64-bit count). cudarc allocations are at least 256-byte aligned,
        // so the 16-byte accesses are aligned; the kernel reads src[i] and writes dst[i] for
        // i < n16 only, and both buffers hold n16 * 16 bytes (asserted); they are distinct
        // allocations (one `&` and one `&mut`), so the `__restrict__` promise holds. 512 threads
        // per block match its `__launch_bounds__(512)`.
        unsafe {
            self.launch(
                KernelId::Bench,
                "moe_bench_copy",
                Config::plain(grid, READ_THREADS),
                a,
                "bench copy",
            )
        }
    }

    /// `moe_bench_spin(long long cycles)`: one block of one thread that waits `cycles` clocks.
    pub(crate) fn bench_spin(&self, cycles: u64) -> Result<(), DeviceError> {
        let mut a = Args::new(self.stream);
        a.i64(cycles as usize);
        // SAFETY: one 64-bit integer argument, as in the C signature; the kernel reads and
        // writes no memory.
        unsafe { self.launch(KernelId::Bench, "moe_bench_spin", Config::plain(1, 1), a, "bench spin") }
    }
}
