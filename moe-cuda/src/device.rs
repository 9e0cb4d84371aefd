//! The device: a CUDA context on an sm_90 GPU and the per-context cache of compiled modules.
//! Driver errors are converted to [`DeviceError`] here, in one place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUdevice_attribute, CUresult};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, DriverError};
use cudarc::nvrtc::Ptx;
use moe_core::DeviceError;

use crate::compile::compile;
use crate::kernels::KernelId;

/// Converts a driver error raised while running `op`.
pub(crate) fn driver_err(op: &'static str) -> impl Fn(DriverError) -> DeviceError {
    move |e: DriverError| {
        if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            DeviceError::OutOfMemory {
                op,
                detail: format!("{e:?}"),
            }
        } else {
            DeviceError::Driver {
                op,
                detail: format!("{e:?}"),
            }
        }
    }
}

/// A CUDA context on one GPU of compute capability 9.0, with its compiled modules.
///
/// Event tracking of cudarc is switched off: every buffer of this crate is used on exactly one
/// stream (the stream it was allocated on), so stream order alone orders its uses, and no event
/// record or wait can break a CUDA graph capture.
#[derive(Debug)]
pub(crate) struct Device {
    ctx: Arc<CudaContext>,
    sm_count: u32,
    name: String,
    modules: Mutex<HashMap<KernelId, Arc<CudaModule>>>,
}

impl Device {
    /// Opens GPU `ordinal`; a missing driver, no GPU or a non-Hopper GPU is `NoDevice`.
    pub(crate) fn open(ordinal: usize) -> Result<Arc<Device>, DeviceError> {
        // SAFETY: `is_culib_present` only tries to dlopen the driver library by its candidate
        // names; it must run before any other driver call, which would panic without a driver.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(DeviceError::NoDevice {
                reason: "the CUDA driver library (libcuda) could not be loaded".into(),
            });
        }
        let no_dev = |e: DriverError| DeviceError::NoDevice {
            reason: format!("CUDA driver: {e:?}"),
        };
        let n = CudaContext::device_count().map_err(no_dev)?;
        if n <= 0 || ordinal >= n as usize {
            return Err(DeviceError::NoDevice {
                reason: format!("GPU {ordinal} requested, {n} present"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(no_dev)?;
        let (major, minor) = ctx.compute_capability().map_err(driver_err("device query"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        if (major, minor) != (9, 0) {
            return Err(DeviceError::NoDevice {
                reason: format!("{name} has compute capability {major}.{minor}; the kernels are built for sm_90a (H100/H200)"),
            });
        }
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err("device query"))? as u32;
        // SAFETY: this context was created just above and no buffer or stream exists on it yet,
        // so no recorded event can be outstanding; every later buffer is used on a single stream
        // (see the type's documentation), which makes the events unnecessary.
        unsafe { ctx.disable_event_tracking() };
        Ok(Arc::new(Device {
            ctx,
            sm_count,
            name,
            modules: Mutex::new(HashMap::new()),
        }))
    }

    pub(crate) fn ctx(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub(crate) fn sm_count(&self) -> u32 {
        self.sm_count.max(1)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The module of `id`, compiled by NVRTC and loaded on first use, then cached.
    pub(crate) fn module(&self, id: KernelId) -> Result<Arc<CudaModule>, DeviceError> {
        let mut cache = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = cache.get(&id) {
            return Ok(m.clone());
        }
        let compiled = compile(id, &[])?;
        let module = self
            .ctx
            .load_module(Ptx::from_binary(compiled.cubin))
            .map_err(driver_err("module load"))?;
        cache.insert(id, module.clone());
        Ok(module)
    }

    /// Entry point `name` of program `id`.
    pub(crate) fn function(&self, id: KernelId, name: &'static str) -> Result<CudaFunction, DeviceError> {
        debug_assert!(id.entry_points().contains(&name));
        self.module(id)?.load_function(name).map_err(driver_err("module load"))
    }
}
