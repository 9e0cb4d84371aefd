//! The cuBLASLt baseline, through cudarc's raw `cublaslt::sys` bindings (its safe API has no
//! FP8): a dense FP8 GEMM for the compute ceiling and a per-expert loop, the GEMM a user would
//! pick instead of ours, over the same live counts, captured in one graph.
//!
//! Layout. Our GEMM is `D (E, T, N) = A (E, T, K) · B (E, N, K)ᵀ`, both operands K-major. cuBLASLt
//! is column-major, so per expert it computes `Dᵀ = B · Aᵀ` as "TN": cuBLASLt's `A` is our
//! weights (`K × N` column-major, ld `K`, `TRANSA = T`), its `B` our activations (`K × m`
//! column-major, ld `K`, `TRANSB = N`), its `D` our output rows (`N × m` column-major, ld `N`,
//! which is `(m, N)` row-major bf16).
//!
//! Scales. Block scaling uses `CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F` (5) for the weights:
//! `(N/128, K/128)` row-major, exactly our `sb` of one expert; and
//! `CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F` (4) for the activations: one f32 per (row, 128 of
//! K), stored row-fastest with leading dimension `m`, i.e. `(K/128, m)`. Our activation scales are
//! `(E, K/128, T)`, so the loop repacks each expert's live rows (padded to 16) into its own
//! contiguous `(K/128, m_pad)` block when the unit is built, not while timing. Per-tensor scaling
//! uses `SCALAR_32F` (the default mode) with a device f32 of 1.0 for each operand.
//!
//! A missing library, an old one, or a mode the library has no kernel for (the heuristic returns
//! no algorithm) is [`LtError::Unavailable`], which the report shows as a column, not a crash.

use std::ffi::{c_void, CStr};
use std::sync::Arc;

use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;
use moe_core::{DeviceError, GROUP};

use super::units::GemmWeights;
use super::{Bench, Graph, OP};
use crate::memory::{alloc, fetch, sync, upload};

/// Workspace handed to every cuBLASLt matmul.
const WORKSPACE_BYTES: usize = 32 << 20;
/// Live rows of each expert are padded to this many for cuBLASLt.
pub const ROW_PAD: usize = 16;
/// The first cuBLASLt version with the 1×128 / 128×128 block-scale modes (CUDA 12.9).
const BLOCK_SCALE_VERSION: usize = 120_900;

/// Why the baseline could not run.
#[derive(Debug, Clone, PartialEq)]
pub enum LtError {
    /// The library is missing or cannot do what was asked (the report's "cuBLASLt unavailable").
    Unavailable(String),
    /// A device failure outside cuBLASLt (allocation, upload, capture).
    Device(DeviceError),
}

impl std::fmt::Display for LtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LtError::Unavailable(why) => write!(f, "cuBLASLt unavailable: {why}"),
            LtError::Device(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LtError {}

impl From<DeviceError> for LtError {
    fn from(e: DeviceError) -> Self {
        LtError::Device(e)
    }
}

/// How the FP8 operands are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LtScaling {
    /// One f32 per operand (`SCALAR_32F`).
    PerTensor,
    /// 128×128 blocks for the weights, 1×128 groups for the activations (DeepSeek-V3's).
    Block,
}

fn status(s: sys::cublasStatus_t, what: &str) -> Result<(), LtError> {
    if s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Ok(());
    }
    // SAFETY: cublasLtGetStatusName returns a pointer to a static NUL-terminated string for any
    // status value (or null, checked), which is only read here.
    let name = unsafe {
        let p = sys::cublasLtGetStatusName(s);
        if p.is_null() {
            format!("{s:?}")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Err(LtError::Unavailable(format!("{what}: {name}")))
}

/// An open cuBLASLt handle and its workspace, on the bench's GPU.
pub struct Lt {
    handle: sys::cublasLtHandle_t,
    version: usize,
    workspace: CudaSlice<u8>,
}

impl std::fmt::Debug for Lt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lt(version {})", self.version)
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        // SAFETY: the handle was created by cublasLtCreate in `open` and is destroyed once, here;
        // every plan and graph using it borrowed `self` and is gone.
        let _ = unsafe { sys::cublasLtDestroy(self.handle) };
    }
}

impl Lt {
    /// Loads `libcublasLt` (found through the loader's path) and creates a handle; a missing
    /// library is `Unavailable`, never a panic.
    pub fn open(bench: &Bench) -> Result<Lt, LtError> {
        // SAFETY: `is_culib_present` only tries to dlopen the library by its candidate names;
        // it must run before any other cuBLASLt call, which would panic without the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(LtError::Unavailable(
                "libcublasLt could not be loaded (add its directory to LD_LIBRARY_PATH)".into(),
            ));
        }
        // SAFETY: the library is present (checked above); cublasLtGetVersion takes no argument.
        let version = unsafe { sys::cublasLtGetVersion() };
        bench.dev.ctx().bind_to_thread().map_err(crate::device::driver_err(OP))?;
        let mut handle: sys::cublasLtHandle_t = std::ptr::null_mut();
        // SAFETY: cublasLtCreate writes one handle through the pointer, which points at a live
        // local; the bench's context is current on this thread (bound above).
        status(unsafe { sys::cublasLtCreate(&mut handle) }, "cublasLtCreate")?;
        let workspace = match alloc::<u8>(&bench.stream, WORKSPACE_BYTES, OP) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: the handle was just created and nothing else holds it.
                let _ = unsafe { sys::cublasLtDestroy(handle) };
                return Err(e.into());
            }
        };
        Ok(Lt {
            handle,
            version,
            workspace,
        })
    }

    /// `cublasLtGetVersion()`, e.g. 130000 + ... for CUDA 13.0.
    pub fn version(&self) -> usize {
        self.version
    }

    /// The version as `major.minor.patch`.
    pub fn version_string(&self) -> String {
        let v = self.version;
        format!("{}.{}.{}", v / 10_000, (v / 100) % 100, v % 100)
    }

    fn check_scaling(&self, scaling: LtScaling) -> Result<(), LtError> {
        if scaling == LtScaling::Block && self.version < BLOCK_SCALE_VERSION {
            return Err(LtError::Unavailable(format!(
                "block scaling needs cuBLASLt >= 12.9, found {}",
                self.version_string()
            )));
        }
        Ok(())
    }
}

fn dptr<T>(bench: &Bench, b: &CudaSlice<T>, offset_elems: usize) -> *const c_void {
    let (p, _guard) = b.device_ptr(&bench.stream);
    (p as usize + offset_elems * std::mem::size_of::<T>()) as *const c_void
}

fn dptr_mut<T>(bench: &Bench, b: &mut CudaSlice<T>, offset_elems: usize) -> *mut c_void {
    let (p, _guard) = b.device_ptr_mut(&bench.stream);
    (p as usize + offset_elems * std::mem::size_of::<T>()) as *mut c_void
}

/// One planned matmul: its descriptor (with the scale pointers baked in), the three layouts,
/// the chosen algorithm and the operand addresses.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
    a: *const c_void,
    b: *const c_void,
    d: *mut c_void,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle below was created by this plan's constructor (null ones were not,
        // and are skipped) and is destroyed once, here; the graphs replaying it are dropped
        // before the plans (field order of the units).
        unsafe {
            for l in self.layouts {
                if !l.is_null() {
                    let _ = sys::cublasLtMatrixLayoutDestroy(l);
                }
            }
            if !self.desc.is_null() {
                let _ = sys::cublasLtMatmulDescDestroy(self.desc);
            }
        }
    }
}

fn set_desc<T>(desc: sys::cublasLtMatmulDesc_t, attr: sys::cublasLtMatmulDescAttributes_t, v: &T) -> Result<(), LtError> {
    // SAFETY: `desc` is a live descriptor; `v` points at a value of exactly the attribute's
    // type (i32 for the transpose and mode attributes, a pointer for the scale pointers), and
    // cuBLASLt copies `size_of::<T>()` bytes from it before returning.
    status(
        unsafe { sys::cublasLtMatmulDescSetAttribute(desc, attr, v as *const T as *const c_void, std::mem::size_of::<T>()) },
        "cublasLtMatmulDescSetAttribute",
    )
}

impl Plan {
    /// `D (m × N row-major bf16) = act (m × K) · w (N × K)ᵀ` with the given scales (device
    /// addresses: the weights' and the activations').
    #[allow(clippy::too_many_arguments)]
    fn new(
        lt: &Lt,
        scaling: LtScaling,
        (m, n, k): (usize, usize, usize),
        w: *const c_void,
        w_scale: *const c_void,
        act: *const c_void,
        act_scale: *const c_void,
        d: *mut c_void,
    ) -> Result<Plan, LtError> {
        use sys::cublasLtMatmulDescAttributes_t as A;
        let mut plan = Plan {
            desc: std::ptr::null_mut(),
            layouts: [std::ptr::null_mut(); 3],
            // SAFETY: cublasLtMatmulAlgo_t is plain data (an array of u64); all zeros is a valid
            // placeholder, overwritten by the heuristic below before any use.
            algo: unsafe { std::mem::zeroed() },
            a: w,
            b: act,
            d,
        };
        // SAFETY: writes one descriptor handle through a pointer to a live field.
        status(
            unsafe {
                sys::cublasLtMatmulDescCreate(
                    &mut plan.desc,
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    sys::cudaDataType_t::CUDA_R_32F,
                )
            },
            "cublasLtMatmulDescCreate",
        )?;
        set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?;
        set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?;
        if scaling == LtScaling::Block {
            set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &5i32)?;
            set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &4i32)?;
        }
        set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale)?;
        set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &act_scale)?;
        let e4m3 = sys::cudaDataType_t::CUDA_R_8F_E4M3;
        let shapes = [(e4m3, k, n, k), (e4m3, k, m, k), (sys::cudaDataType_t::CUDA_R_16BF, n, m, n)];
        for (slot, (ty, rows, cols, ld)) in plan.layouts.iter_mut().zip(shapes) {
            // SAFETY: writes one layout handle through a pointer to a live array slot.
            status(
                unsafe { sys::cublasLtMatrixLayoutCreate(slot, ty, rows as u64, cols as u64, ld as i64) },
                "cublasLtMatrixLayoutCreate",
            )?;
        }
        let mut pref: sys::cublasLtMatmulPreference_t = std::ptr::null_mut();
        // SAFETY: writes one preference handle through a pointer to a live local.
        status(
            unsafe { sys::cublasLtMatmulPreferenceCreate(&mut pref) },
            "cublasLtMatmulPreferenceCreate",
        )?;
        let ws = WORKSPACE_BYTES as u64;
        let mut result: sys::cublasLtMatmulHeuristicResult_t = {
            // SAFETY: plain data (algo words, sizes, a status enum whose zero is SUCCESS, floats).
            unsafe { std::mem::zeroed() }
        };
        let mut found: std::ffi::c_int = 0;
        // SAFETY: `pref` is live; the attribute is a u64 read from a live local. The heuristic
        // reads the live descriptor and layouts (C uses D's layout, as beta is 0) and writes at
        // most one result (requested count 1) and the count through live locals. The preference
        // is destroyed once, after its last use.
        let heur = unsafe {
            let s1 = sys::cublasLtMatmulPreferenceSetAttribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            );
            let s2 = sys::cublasLtMatmulAlgoGetHeuristic(
                lt.handle,
                plan.desc,
                plan.layouts[0],
                plan.layouts[1],
                plan.layouts[2],
                plan.layouts[2],
                pref,
                1,
                &mut result,
                &mut found,
            );
            let _ = sys::cublasLtMatmulPreferenceDestroy(pref);
            status(s1, "cublasLtMatmulPreferenceSetAttribute").and(status(s2, "cublasLtMatmulAlgoGetHeuristic"))
        };
        heur?;
        if found < 1 {
            return Err(LtError::Unavailable(format!(
                "no cuBLASLt algorithm for FP8 {scaling:?} scaling at m={m} n={n} k={k}"
            )));
        }
        plan.algo = result.algo;
        Ok(plan)
    }

    /// Enqueues the matmul on the bench stream.
    fn enqueue(&self, lt: &Lt, bench: &Bench) -> Result<(), LtError> {
        let (alpha, beta) = (1f32, 0f32);
        let (ws, _g) = lt.workspace.device_ptr(&bench.stream);
        // SAFETY: every handle is live (owned by `lt` and `self`); alpha and beta are host f32s
        // (the default host pointer mode) read during the call; the operand addresses point into
        // device buffers that the owning unit keeps alive for as long as the plan and its graph,
        // and each covers its layout (weights N·K bytes, activations m·K bytes, output m·N
        // bf16, scales as the mode requires: asserted where the plans are built); C aliases D
        // with beta = 0; the workspace is WORKSPACE_BYTES long, as the preference promised.
        let s = unsafe {
            sys::cublasLtMatmul(
                lt.handle,
                self.desc,
                &alpha as *const f32 as *const c_void,
                self.a,
                self.layouts[0],
                self.b,
                self.layouts[1],
                &beta as *const f32 as *const c_void,
                self.d,
                self.layouts[2],
                self.d,
                self.layouts[2],
                &self.algo,
                ws as usize as *mut c_void,
                WORKSPACE_BYTES,
                bench.stream.cu_stream() as sys::cudaStream_t,
            )
        };
        status(s, "cublasLtMatmul")
    }
}

fn capture_plans(bench: &Bench, lt: &Lt, plans: &[Plan]) -> Result<Graph, LtError> {
    let mut err = None;
    let graph = bench.capture(|_| {
        for p in plans {
            if let Err(e) = p.enqueue(lt, bench) {
                err = Some(e);
                break;
            }
        }
        Ok(())
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(graph),
    }
}

/// The operands of a dense unit: weights, activations, their scales, the output.
type DenseBufs = (CudaSlice<u8>, CudaSlice<u8>, CudaSlice<f32>, CudaSlice<f32>, CudaSlice<u16>);

/// A dense FP8 GEMM `m × n × k` (the compute ceiling), on caller-supplied E4M3 operands.
pub struct LtDenseUnit {
    graph: Graph,
    _plans: Vec<Plan>,
    _bufs: DenseBufs,
    flops: f64,
}

impl std::fmt::Debug for LtDenseUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LtDenseUnit({} FLOP)", self.flops)
    }
}

impl LtDenseUnit {
    /// `w (n × k)` and `act (m × k)` E4M3 bytes; every scale is 1.0. `m`, `n`, `k` multiples of 128.
    pub fn new(
        bench: &Bench,
        lt: &Lt,
        scaling: LtScaling,
        (m, n, k): (usize, usize, usize),
        w: &[u8],
        act: &[u8],
    ) -> Result<Self, LtError> {
        lt.check_scaling(scaling)?;
        assert!(m % GROUP == 0 && n % GROUP == 0 && k % GROUP == 0 && w.len() == n * k && act.len() == m * k);
        let s = &bench.stream;
        let w_d = upload(s, w, OP)?;
        let a_d = upload(s, act, OP)?;
        let ws_d = upload(s, &vec![1f32; (n / GROUP) * (k / GROUP)], OP)?;
        let as_d = upload(s, &vec![1f32; m * (k / GROUP)], OP)?;
        let mut d = alloc::<u16>(s, m * n, OP)?;
        let plan = Plan::new(
            lt,
            scaling,
            (m, n, k),
            dptr(bench, &w_d, 0),
            dptr(bench, &ws_d, 0),
            dptr(bench, &a_d, 0),
            dptr(bench, &as_d, 0),
            dptr_mut(bench, &mut d, 0),
        )?;
        let plans = vec![plan];
        let graph = capture_plans(bench, lt, &plans)?;
        Ok(LtDenseUnit {
            graph,
            _plans: plans,
            _bufs: (w_d, a_d, ws_d, as_d, d),
            flops: 2.0 * (m * n * k) as f64,
        })
    }

    /// The graph to time.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Floating-point operations per replay.
    pub fn flops(&self) -> f64 {
        self.flops
    }
}

/// The per-expert cuBLASLt loop over the live rows (padded to [`ROW_PAD`]) of every expert,
/// block-scaled, on the same resident weights as our GEMM.
pub struct LtLoopUnit {
    graph: Graph,
    _plans: Vec<Plan>,
    _weights: Arc<GemmWeights>,
    _act: CudaSlice<u8>,
    _act_scale: CudaSlice<f32>,
    d: CudaSlice<u16>,
    /// Per expert: (first packed row, live rows); experts without live rows are skipped.
    rows: Vec<(usize, usize)>,
    t: usize,
}

impl std::fmt::Debug for LtLoopUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LtLoopUnit({} matmuls)", self._plans.len())
    }
}

impl LtLoopUnit {
    /// `a (E, T, K)` E4M3 with f32 MN-major scales `sa (E, K/128, T)` and `counts` (already
    /// validated by the caller's `GemmUnit` on the same inputs: lengths are asserted here).
    pub fn new(bench: &Bench, lt: &Lt, weights: Arc<GemmWeights>, t: usize, a: &[u8], sa: &[f32], counts: &[i32]) -> Result<Self, LtError> {
        lt.check_scaling(LtScaling::Block)?;
        let (e, n, k) = weights.dims();
        let kb = k / GROUP;
        assert!(
            a.len() == e * t * k && sa.len() == e * kb * t && counts.len() == e,
            "moe-cuda bug: LtLoopUnit inputs"
        );
        // Pack: expert ex's live rows, padded with zero rows (scale 1) to a multiple of 16.
        let mut rows = Vec::new();
        let (mut act, mut act_s) = (Vec::new(), Vec::new());
        let mut scale_at = Vec::new();
        for ex in 0..e {
            let live = counts[ex].clamp(0, t as i32) as usize;
            if live == 0 {
                continue;
            }
            let m_pad = live.div_ceil(ROW_PAD) * ROW_PAD;
            rows.push((act.len() / k, live));
            scale_at.push((ex, act_s.len(), m_pad));
            act.extend_from_slice(&a[ex * t * k..][..live * k]);
            act.resize(act.len() + (m_pad - live) * k, 0);
            for g in 0..kb {
                act_s.extend_from_slice(&sa[(ex * kb + g) * t..][..live]);
                act_s.resize(act_s.len() + (m_pad - live), 1.0);
            }
        }
        let total_rows = act.len() / k;
        let s = &bench.stream;
        let act_d = upload(s, &act, OP)?;
        let act_sd = upload(s, &act_s, OP)?;
        let mut d = alloc::<u16>(s, total_rows.max(1) * n, OP)?;
        let sb_per = (n / GROUP) * kb;
        let mut plans = Vec::with_capacity(rows.len());
        for (&(row0, _), &(ex, s_off, m_pad)) in rows.iter().zip(&scale_at) {
            // Bounds of what this plan's layouts address: weights of expert ex, m_pad packed
            // rows from row0, their scales, m_pad output rows from row0.
            assert!((ex + 1) * n * k <= weights.b.len() && (ex + 1) * sb_per <= weights.sb.len());
            assert!((row0 + m_pad) * k <= act_d.len() && s_off + kb * m_pad <= act_sd.len() && (row0 + m_pad) * n <= d.len());
            plans.push(Plan::new(
                lt,
                LtScaling::Block,
                (m_pad, n, k),
                dptr(bench, &weights.b, ex * n * k),
                dptr(bench, &weights.sb, ex * sb_per),
                dptr(bench, &act_d, row0 * k),
                dptr(bench, &act_sd, s_off),
                dptr_mut(bench, &mut d, row0 * n),
            )?);
        }
        let graph = capture_plans(bench, lt, &plans)?;
        Ok(LtLoopUnit {
            graph,
            _plans: plans,
            _weights: weights,
            _act: act_d,
            _act_scale: act_sd,
            d,
            rows: {
                let mut per = vec![(0, 0); e];
                let mut it = rows.iter();
                for ex in 0..e {
                    if counts[ex].clamp(0, t as i32) > 0 {
                        per[ex] = *it.next().expect("one packed block per live expert");
                    }
                }
                per
            },
            t,
        })
    }

    /// The graph to time.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The result scattered into `(E, T, N)` (zeros past the live rows), for the check.
    pub fn download_d(&self, bench: &Bench) -> Result<Vec<bf16>, LtError> {
        let packed = fetch(&bench.stream, &self.d, OP)?;
        sync(&bench.dev, &bench.stream, OP)?;
        let (e, n, _) = self._weights.dims();
        let mut out = vec![bf16::ZERO; e * self.t * n];
        for (ex, &(row0, live)) in self.rows.iter().enumerate() {
            for r in 0..live {
                for (o, &v) in out[(ex * self.t + r) * n..][..n].iter_mut().zip(&packed[(row0 + r) * n..][..n]) {
                    *o = bf16::from_bits(v);
                }
            }
        }
        Ok(out)
    }
}
