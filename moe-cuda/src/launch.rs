//! Every kernel launch of the crate, and nothing else: one function per entry point, and the
//! one helper they all go through.
//!
//! **Architecture invariant:** kernels are launched only from this module.
//!
//! Each function takes typed device buffers and the problem's dimensions, asserts that every
//! buffer is at least as long as the kernel will index (a failure is a bug of this crate, not a
//! user error: the public entry points validated the shapes), pushes the arguments in the
//! order of the kernel's C signature, quoted above each function, and calls [`Launcher::launch`]
//! with a [`Config`]. Grids are grid-stride loops, so any grid size covers the work; sizes here
//! only bound the parallelism.
//!
//! The helper launches through `cuLaunchKernelEx`, so a [`Config`] can ask for dynamic shared
//! memory above the default 48 KiB (the function's limit is raised first), a thread-block
//! cluster and programmatic dependent launch; the kernels of today use a plain configuration.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{self, CUfunction_attribute};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};
use moe_core::{DeviceError, Numerics, ScaleFormat, GROUP};

use crate::device::{driver_err, Device};
use crate::kernels::{fmt_code, numerics_code, KernelId};
use crate::tma::TensorMap;

mod bench;
mod config;
mod route;
mod wgmma;

pub(crate) use config::Config;
use config::DEFAULT_DYN_SMEM;
pub(crate) use wgmma::{gemm_layouts, WG_BM, WG_BN};

/// Rows per tile of the grouped GEMM (`BM` in gemm.cu); the tile prefix is computed for it.
pub(crate) const GEMM_BM: usize = 64;
/// Columns per tile of the grouped GEMM (`BN` in gemm.cu).
pub(crate) const GEMM_BN: usize = 64;

/// Where launches go: the device (for functions) and the stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Launcher<'a> {
    pub(crate) dev: &'a Device,
    pub(crate) stream: &'a Arc<CudaStream>,
}

/// One kernel argument, held by value until the launch has copied it.
#[derive(Debug, Clone, Copy)]
enum Arg {
    Ptr(sys::CUdeviceptr),
    I32(i32),
    U32(u32),
    I64(i64),
    /// A TMA tensor map, passed by value (`const __grid_constant__ TmaMap`).
    Map(TensorMap),
}

/// The argument list of one launch, pushed in the order of the kernel's C signature.
///
/// Device buffers are borrowed for `'a` (shared for inputs, exclusive for outputs), so none can
/// be freed or written by the host while the list exists; the launch then orders every later
/// use of them on the same stream.
pub(crate) struct Args<'a> {
    stream: &'a CudaStream,
    vals: Vec<Arg>,
    /// cudarc's read/write records of the borrowed buffers, dropped after the launch (no-ops
    /// while event tracking is off, see `Device`).
    guards: Vec<SyncOnDrop<'a>>,
}

impl<'a> Args<'a> {
    fn new(stream: &'a CudaStream) -> Self {
        Args {
            stream,
            vals: Vec::with_capacity(16),
            guards: Vec::new(),
        }
    }

    /// A buffer the kernel reads (`const T*`).
    fn buf<T>(&mut self, b: &'a CudaSlice<T>) -> &mut Self {
        let (ptr, guard) = b.device_ptr(self.stream);
        self.vals.push(Arg::Ptr(ptr));
        self.guards.push(guard);
        self
    }

    /// A buffer the kernel writes (`T*`).
    fn buf_mut<T>(&mut self, b: &'a mut CudaSlice<T>) -> &mut Self {
        let (ptr, guard) = b.device_ptr_mut(self.stream);
        self.vals.push(Arg::Ptr(ptr));
        self.guards.push(guard);
        self
    }

    /// A buffer the kernel reads, or a null pointer.
    fn opt_buf<T>(&mut self, b: Option<&'a CudaSlice<T>>) -> &mut Self {
        match b {
            Some(b) => self.buf(b),
            None => {
                self.vals.push(Arg::Ptr(0));
                self
            }
        }
    }

    /// A bf16 or f32 input as `const void*`.
    fn x(&mut self, x: XIn<'a>) -> &mut Self {
        match x {
            XIn::Bf16(b) => self.buf(b),
            XIn::F32(b) => self.buf(b),
        }
    }

    /// An `int` dimension (the entry points rejected every dimension past `MAX_DIM`).
    #[track_caller]
    fn dim(&mut self, v: usize) -> &mut Self {
        self.vals.push(Arg::I32(int(v)));
        self
    }

    /// An `int` flag or code.
    fn i32(&mut self, v: i32) -> &mut Self {
        self.vals.push(Arg::I32(v));
        self
    }

    /// An `unsigned int`.
    fn u32(&mut self, v: u32) -> &mut Self {
        self.vals.push(Arg::U32(v));
        self
    }

    /// A `long long` count.
    fn i64(&mut self, v: usize) -> &mut Self {
        self.vals.push(Arg::I64(i64::try_from(v).expect("moe-cuda bug: a count past i64")));
        self
    }
}

/// A bf16 (as raw `u16` bits) or f32 input.
#[derive(Debug, Clone, Copy)]
pub(crate) enum XIn<'a> {
    Bf16(&'a CudaSlice<u16>),
    F32(&'a CudaSlice<f32>),
}

impl XIn<'_> {
    fn len(&self) -> usize {
        match self {
            XIn::Bf16(b) => b.len(),
            XIn::F32(b) => b.len(),
        }
    }
    fn is_f32(&self) -> i32 {
        matches!(self, XIn::F32(_)) as i32
    }
}

#[track_caller]
fn need<T>(buf: &CudaSlice<T>, n: usize, what: &str) {
    assert!(
        buf.len() >= n,
        "moe-cuda bug: device buffer `{what}` holds {} elements, the launch indexes {n}",
        buf.len()
    );
}

/// Asserts the lengths of a grouped GEMM's operands for `(E, T, N, K)`: `a (E, T, K)`,
/// `sa (E, sa_cols, T)`, `b (E, N, K)`, `sb (E, N/128, K/128)`, `d (E, T, N)` and `counts (E)`.
#[track_caller]
#[allow(clippy::too_many_arguments)]
fn need_gemm(
    a: &CudaSlice<u8>,
    sa: &CudaSlice<u32>,
    sa_cols: usize,
    bw: &CudaSlice<u8>,
    sb: &CudaSlice<f32>,
    d: &CudaSlice<u16>,
    counts: &CudaSlice<i32>,
    (e, t, n, k): (usize, usize, usize, usize),
) {
    need(a, e * t * k, "a");
    need(sa, e * sa_cols * t, "sa");
    need(bw, e * n * k, "b");
    need(sb, e * (n / GROUP) * (k / GROUP), "sb");
    need(d, e * t * n, "d");
    need(counts, e, "counts");
}

#[track_caller]
fn int(v: usize) -> i32 {
    i32::try_from(v).expect("moe-cuda bug: a dimension past i32 reached a launch (the entry points reject it)")
}

fn blocks_for(items: usize, per_block: usize, cap: u32) -> u32 {
    let b = items.div_ceil(per_block.max(1)).max(1);
    (b.min(cap as usize)) as u32
}

impl Launcher<'_> {
    /// Launches entry point `name` of program `id` with `cfg` and `args`, through
    /// `cuLaunchKernelEx`; raises the function's dynamic shared-memory limit first when `cfg`
    /// asks for more than 48 KiB.
    ///
    /// # Safety
    ///
    /// `args` must match the kernel's C signature in number, order and type, and every address
    /// the kernel computes from them under `cfg` must lie inside the buffers passed: the caller
    /// proves both in a `// SAFETY:` comment.
    unsafe fn launch(&self, id: KernelId, name: &'static str, cfg: Config, args: Args<'_>, op: &'static str) -> Result<(), DeviceError> {
        cfg.validate();
        let f = self.dev.function(id, name)?;
        self.dev.ctx().bind_to_thread().map_err(driver_err(op))?;
        if cfg.dyn_smem > DEFAULT_DYN_SMEM {
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                cfg.dyn_smem as i32,
            )
            .map_err(driver_err(op))?;
        }
        let Args { mut vals, guards, .. } = args;
        // Pointers to the argument values; `vals` is neither moved nor resized until the call
        // below has returned (the driver copies the values at launch).
        let mut params: Vec<*mut c_void> = vals
            .iter_mut()
            .map(|a| match a {
                Arg::Ptr(p) => p as *mut sys::CUdeviceptr as *mut c_void,
                Arg::I32(v) => v as *mut i32 as *mut c_void,
                Arg::U32(v) => v as *mut u32 as *mut c_void,
                Arg::I64(v) => v as *mut i64 as *mut c_void,
                Arg::Map(m) => m as *mut TensorMap as *mut c_void,
            })
            .collect();
        let mut attrs = cfg.attributes();
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid.0,
            gridDimY: cfg.grid.1,
            gridDimZ: cfg.grid.2,
            blockDimX: cfg.block.0,
            blockDimY: cfg.block.1,
            blockDimZ: cfg.block.2,
            sharedMemBytes: cfg.dyn_smem,
            hStream: self.stream.cu_stream(),
            attrs: if attrs.is_empty() {
                std::ptr::null_mut()
            } else {
                attrs.as_mut_ptr()
            },
            numAttrs: attrs.len() as u32,
        };
        // SAFETY: `config` is a valid launch configuration (validated above: non-empty grid
        // and block, dynamic shared memory within the function's raised limit, clusters
        // dividing the grid) on this device's stream, whose context is bound to this thread;
        // `attrs` and `params` (one pointer per argument, to a value of the C parameter's size)
        // outlive the call, `f` is a live function of a module loaded in this context, and the
        // caller proved the argument list and the kernel's addresses (this function's contract).
        let res = unsafe { sys::cuLaunchKernelEx(&config, f.cu_function(), params.as_mut_ptr(), std::ptr::null_mut()) };
        drop(guards);
        res.result().map_err(driver_err(op))
    }

    /// `moe_counts_prefix(const int* counts, int E, int T, int bm, int* prefix, int* tile_prefix)`.
    pub(crate) fn counts_prefix(
        &self,
        counts: &CudaSlice<i32>,
        e: usize,
        t: usize,
        bm: usize,
        prefix: &mut CudaSlice<i32>,
        tile_prefix: &mut CudaSlice<i32>,
    ) -> Result<(), DeviceError> {
        need(counts, e, "counts");
        need(prefix, e + 1, "prefix");
        need(tile_prefix, e + 1, "tile_prefix");
        let mut a = Args::new(self.stream);
        a.buf(counts).dim(e).dim(t).dim(bm).buf_mut(prefix).buf_mut(tile_prefix);
        // SAFETY: arguments match the C signature above in order and type (three pointers to
        // device i32 buffers, three ints). The kernel reads counts[0..E) and writes
        // prefix[0..=E] and tile_prefix[0..=E]; the lengths were asserted above. It must run
        // with exactly 1024 threads in one block (its shared arrays have 1024 entries).
        unsafe { self.launch(KernelId::Counts, "moe_counts_prefix", Config::plain(1, 1024), a, "counts prefix") }
    }

    /// `moe_token_group_quant(const void* x, int x_is_f32, const int* gather, u8* q, u32* s,
    /// int E, int T, int K, const int* prefix, int fmt, int mn_major)`.
    ///
    /// `x_rows` is the number of rows of `x` (`E*T`, or `M` when gathering: every gather entry
    /// of a live row must be below it). Without `prefix` every one of the `E*T` rows is written.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn token_group_quant(
        &self,
        x: XIn<'_>,
        x_rows: usize,
        gather: Option<&CudaSlice<i32>>,
        q: &mut CudaSlice<u8>,
        s: &mut CudaSlice<u32>,
        (e, t, k): (usize, usize, usize),
        prefix: Option<&CudaSlice<i32>>,
        fmt: ScaleFormat,
        mn_major: bool,
    ) -> Result<(), DeviceError> {
        let cols = fmt.columns(k / GROUP);
        assert!(
            k % GROUP == 0 && x.len() >= x_rows * k,
            "moe-cuda bug: x holds {} elements, needs {x_rows}x{k}",
            x.len()
        );
        if gather.is_none() {
            assert!(x_rows >= e * t, "moe-cuda bug: x has {x_rows} rows, needs {}", e * t);
        }
        if let Some(g) = gather {
            need(g, e * t, "gather");
        }
        need(q, e * t * k, "q");
        need(s, e * t * cols, "s");
        if let Some(p) = prefix {
            need(p, e + 1, "prefix");
        }
        let mut a = Args::new(self.stream);
        a.x(x).i32(x.is_f32()).opt_buf(gather).buf_mut(q).buf_mut(s);
        a.dim(e).dim(t).dim(k).opt_buf(prefix).i32(fmt_code(fmt)).i32(mn_major as i32);
        let grid = blocks_for(e * t * cols, 8, self.dev.sm_count() * 16);
        // SAFETY: arguments match the C signature above in order and type (x as a device
        // pointer with its element type flag, gather/prefix as device pointers or null, q and
        // s device pointers, five ints). The kernel visits logical rows (e, t) with e < E and
        // t < T (t < prefix-derived counts <= T when `prefix` is given: the prefix kernel
        // clamps), reads x rows below `x_rows` (identity or gather entries, which the caller
        // guarantees), writes q[(e*T+t)*K ..+K] and one scale word per (row, column): all
        // within the lengths asserted above. 256 threads per block = 8 whole warps.
        unsafe {
            self.launch(
                KernelId::Quant,
                "moe_token_group_quant",
                Config::plain(grid, 256),
                a,
                "token-group quant",
            )
        }
    }

    /// `moe_block_quant(const void* w, int w_is_f32, u8* q, float* s, int E, int R, int C, int pow2)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn block_quant(
        &self,
        w: XIn<'_>,
        q: &mut CudaSlice<u8>,
        s: &mut CudaSlice<f32>,
        e: usize,
        r: usize,
        c: usize,
        pow2: bool,
    ) -> Result<(), DeviceError> {
        let nblocks = e * r.div_ceil(GROUP) * c.div_ceil(GROUP);
        assert!(w.len() >= e * r * c, "moe-cuda bug: w too short");
        need(q, e * r * c, "q");
        need(s, nblocks, "s");
        let mut a = Args::new(self.stream);
        a.x(w).i32(w.is_f32()).buf_mut(q).buf_mut(s).dim(e).dim(r).dim(c).i32(pow2 as i32);
        let grid = blocks_for(nblocks, 1, self.dev.sm_count() * 16);
        // SAFETY: arguments match the C signature above in order and type. Each block reads and
        // writes only elements (e, r, c) with r < R and c < C (bounds-checked in the kernel) and
        // one scale per 128x128 block, within the lengths asserted above; its shared reduction
        // array has 8 entries, one per warp of the 256-thread block given here.
        unsafe { self.launch(KernelId::Quant, "moe_block_quant", Config::plain(grid, 256), a, "block quant") }
    }

    /// `moe_silu_mul_quant(const u16* y, u8* q, u32* s, int E, int T, int H, const int* prefix,
    /// int fmt, int numerics)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn silu_mul_quant(
        &self,
        y: &CudaSlice<u16>,
        q: &mut CudaSlice<u8>,
        s: &mut CudaSlice<u32>,
        (e, t, h): (usize, usize, usize),
        prefix: &CudaSlice<i32>,
        fmt: ScaleFormat,
        numerics: Numerics,
    ) -> Result<(), DeviceError> {
        let cols = fmt.columns(h / GROUP);
        assert!(h % GROUP == 0);
        need(y, e * t * 2 * h, "y");
        need(q, e * t * h, "q");
        need(s, e * cols * t, "s");
        need(prefix, e + 1, "prefix");
        let mut a = Args::new(self.stream);
        a.buf(y)
            .buf_mut(q)
            .buf_mut(s)
            .dim(e)
            .dim(t)
            .dim(h)
            .buf(prefix)
            .i32(fmt_code(fmt))
            .i32(numerics_code(numerics));
        // A fixed grid for the shape (never for the counts), so a graph replay with other
        // counts stays valid: at most 3 blocks of 8 warps per SM (all resident at once: the
        // kernel's __launch_bounds__(256, 3) keeps it within 80 registers per thread), and no
        // more warps than the most work units the shape can have (every row live, two groups
        // per unit). The kernel picks its unit size from the live rows on the device.
        let max_units = e * t * (h / GROUP).div_ceil(2);
        let grid = blocks_for(max_units, 8, self.dev.sm_count() * 3);
        // SAFETY: arguments match the C signature above in order and type. The kernel visits
        // only live rows t < clamp(counts[e], 0, T) through `prefix` (E+1 entries, computed by
        // moe_counts_prefix from clamped counts; its expert search stays in [0, E-1] whatever
        // the prefix holds), reads y[(e*T+t)*2H ..+2H], writes q[(e*T+t)*H ..+H] and
        // s[(e*cols+col)*T+t] for col < cols: within the lengths asserted above. It is
        // compiled with __launch_bounds__(256, 3) and launched with 256 threads (8 whole warps;
        // its shuffles and ballots need whole warps).
        unsafe { self.launch(KernelId::Silu, "moe_silu_mul_quant", Config::plain(grid, 256), a, "silu-mul-quant") }
    }

    /// `moe_grouped_gemm[_k32](const u8* a, const u32* sa, int sa_packed, const u8* b,
    /// const float* sb, u16* d, const int* counts, const int* tile_prefix, int E, int T, int N, int K)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grouped_gemm(
        &self,
        a: &CudaSlice<u8>,
        sa: &CudaSlice<u32>,
        sa_fmt: ScaleFormat,
        bw: &CudaSlice<u8>,
        sb: &CudaSlice<f32>,
        d: &mut CudaSlice<u16>,
        counts: &CudaSlice<i32>,
        tile_prefix: &CudaSlice<i32>,
        (e, t, n, k): (usize, usize, usize, usize),
        chain: bool,
    ) -> Result<(), DeviceError> {
        assert!(n % GROUP == 0 && k % GROUP == 0 && GROUP % GEMM_BN == 0);
        let kb = k / GROUP;
        need_gemm(a, sa, sa_fmt.columns(kb), bw, sb, d, counts, (e, t, n, k));
        need(tile_prefix, e + 1, "tile_prefix");
        let name = if chain { "moe_grouped_gemm" } else { "moe_grouped_gemm_k32" };
        let mut args = Args::new(self.stream);
        args.buf(a).buf(sa).i32(sa_fmt.is_packed() as i32).buf(bw).buf(sb).buf_mut(d);
        args.buf(counts).buf(tile_prefix).dim(e).dim(t).dim(n).dim(k);
        let max_tiles = e * t.div_ceil(GEMM_BM) * (n / GEMM_BN);
        let grid = blocks_for(max_tiles, 1, self.dev.sm_count() * 4);
        // SAFETY: arguments match the C signature above in order and type. The tile prefix
        // was computed by moe_counts_prefix with bm = GEMM_BM from the same `counts`, so every
        // visited tile has e < E and rows m0 + r < T; the kernel reads `a` only for rows below
        // clamp(counts[e], 0, T) <= T, `b` rows n0..n0+64 < N, `sa` and `sb` at their layouts'
        // indices for kb < K/128, and writes `d` only for live rows: within the lengths
        // asserted above. It needs exactly 4 warps (128 threads); its 18 KiB of shared memory
        // is static.
        unsafe { self.launch(KernelId::Gemm, name, Config::plain(grid, 128), args, "grouped gemm") }
    }

    /// `moe_finalize(const u16* eo, const int* ids, const int* rows, const float* w, u16* out,
    /// long long M, int K, int topk, int E, int T)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finalize(
        &self,
        eo: &CudaSlice<u16>,
        ids: &CudaSlice<i32>,
        rows: &CudaSlice<i32>,
        w: &CudaSlice<f32>,
        out: &mut CudaSlice<u16>,
        (m, k, topk, e, t): (usize, usize, usize, usize, usize),
    ) -> Result<(), DeviceError> {
        need(eo, e * t * k, "expert_out");
        need(ids, m * topk, "topk_ids");
        need(rows, m * topk, "rows");
        need(w, m * topk, "topk_weights");
        need(out, m * k, "out");
        let mut a = Args::new(self.stream);
        a.buf(eo).buf(ids).buf(rows).buf(w).buf_mut(out);
        a.i64(m).dim(k).dim(topk).dim(e).dim(t);
        let grid = blocks_for(m * k, 256, self.dev.sm_count() * 16);
        // SAFETY: arguments match the C signature above in order and type (M as a 64-bit
        // integer). The kernel reads expert_out only at (id, row) with 0 <= id < E and
        // 0 <= row < T (checked in the kernel) and k < K, reads ids/rows/w below M*topk, and
        // writes out below M*K: within the lengths asserted above.
        unsafe { self.launch(KernelId::Finalize, "moe_finalize", Config::plain(grid, 256), a, "finalize") }
    }

    /// `moe_exp_f32_range(u32 start, long long n, float* out)`.
    pub(crate) fn exp_f32_range(&self, start: u32, n: usize, out: &mut CudaSlice<f32>) -> Result<(), DeviceError> {
        need(out, n, "out");
        let mut a = Args::new(self.stream);
        a.u32(start).i64(n).buf_mut(out);
        let grid = blocks_for(n, 256, self.dev.sm_count() * 32);
        // SAFETY: arguments match the C signature in order and type; the kernel writes out[i]
        // for i < n only, and `out` holds at least n elements (asserted).
        unsafe {
            self.launch(
                KernelId::Selftest,
                "moe_exp_f32_range",
                Config::plain(grid, 256),
                a,
                "exp self-test",
            )
        }
    }

    /// `moe_e4m3_range(u32 start, long long n, u8* out)`.
    pub(crate) fn e4m3_range(&self, start: u32, n: usize, out: &mut CudaSlice<u8>) -> Result<(), DeviceError> {
        need(out, n, "out");
        let mut a = Args::new(self.stream);
        a.u32(start).i64(n).buf_mut(out);
        let grid = blocks_for(n, 256, self.dev.sm_count() * 32);
        // SAFETY: arguments match the C signature in order and type; the kernel writes out[i]
        // for i < n only, and `out` holds at least n elements (asserted).
        unsafe { self.launch(KernelId::Selftest, "moe_e4m3_range", Config::plain(grid, 256), a, "e4m3 self-test") }
    }

    /// `moe_vllm_ceil_table(u16* out)`: 65536 entries.
    pub(crate) fn vllm_ceil_table(&self, out: &mut CudaSlice<u16>) -> Result<(), DeviceError> {
        need(out, 65536, "out");
        let mut a = Args::new(self.stream);
        a.buf_mut(out);
        // SAFETY: one argument, a device pointer to at least 65536 u16 (asserted); the kernel
        // writes out[i] for i < 65536 only, and 256 x 256 threads cover exactly that range.
        unsafe {
            self.launch(
                KernelId::Selftest,
                "moe_vllm_ceil_table",
                Config::plain(256, 256),
                a,
                "vllm ceil self-test",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_items_within_the_cap() {
        assert_eq!(blocks_for(0, 8, 100), 1);
        assert_eq!(blocks_for(17, 8, 100), 3);
        assert_eq!(blocks_for(1 << 40, 8, 100), 100);
    }
}
