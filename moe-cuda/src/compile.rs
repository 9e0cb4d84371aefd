//! NVRTC compilation of the kernel programs to `sm_90a` cubins.
//!
//! cudarc's safe `compile_ptx_with_opts` returns PTX, drops the log on success and passes no
//! headers; the backend wants the cubin (so `ptxas` runs here, with its resource report), the
//! log in every case, and the kernels' `#include "common.cuh"` resolved against the embedded
//! [`HEADERS`], so this module drives NVRTC's C API directly.

use std::ffi::{c_char, c_int, CString};

use cudarc::nvrtc::{result, sys};
use moe_core::DeviceError;

use crate::kernels::{KernelId, HEADERS, NVRTC_OPTIONS};

/// A compiled program: the `sm_90a` cubin and NVRTC's log (warnings, `ptxas` report).
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The program.
    pub id: KernelId,
    /// The cubin image, loadable with `cuModuleLoadData`.
    pub cubin: Vec<u8>,
    /// NVRTC's log, possibly empty.
    pub log: String,
}

/// Whether `libnvrtc` can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: `is_culib_present` only tries to open the shared library by its candidate names
    // (dlopen) and closes it again; it dereferences nothing of ours.
    unsafe { sys::is_culib_present() }
}

fn log_of(prog: sys::nvrtcProgram) -> String {
    // SAFETY: `prog` was returned by `nvrtcCreateProgram` and is destroyed only after this call
    // (by `ProgramGuard::drop`, which runs later in `compile`).
    match unsafe { result::get_program_log(prog) } {
        Ok(raw) => {
            let bytes: Vec<u8> = raw.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(e) => format!("(no log: {e:?})"),
    }
}

struct ProgramGuard(sys::nvrtcProgram);

impl Drop for ProgramGuard {
    fn drop(&mut self) {
        // SAFETY: the program was created by `nvrtcCreateProgram` and is destroyed exactly once,
        // here; nothing uses it after the guard is dropped.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

/// Compiles one program with [`NVRTC_OPTIONS`] plus `extra` options (e.g. `--ptxas-options=-v`).
///
/// An option with a NUL byte (which no C string can hold) is [`DeviceError::Compile`], checked
/// before anything else; a missing NVRTC library is [`DeviceError::NoDevice`]; a compile
/// failure is [`DeviceError::Compile`] with the program's file name and NVRTC's log.
pub fn compile(id: KernelId, extra: &[&str]) -> Result<Compiled, DeviceError> {
    let compile_err = |log: String| DeviceError::Compile {
        kernel: id.file().to_string(),
        log,
    };
    let opts = c_options(extra).map_err(compile_err)?;
    if !nvrtc_present() {
        return Err(DeviceError::NoDevice {
            reason: "libnvrtc (CUDA 13) could not be loaded".into(),
        });
    }
    let cstr = |what: &str, s: &str| CString::new(s).map_err(|_| compile_err(format!("{what} contains a NUL byte")));
    let src = cstr("the source", id.source())?;
    let name = cstr("the file name", id.file())?;
    let mut header_srcs = Vec::with_capacity(HEADERS.len());
    let mut header_names = Vec::with_capacity(HEADERS.len());
    for (inc, text) in HEADERS {
        header_names.push(cstr("a header name", inc)?);
        header_srcs.push(cstr(inc, text)?);
    }
    let header_src_ptrs: Vec<*const c_char> = header_srcs.iter().map(|c| c.as_ptr()).collect();
    let header_name_ptrs: Vec<*const c_char> = header_names.iter().map(|c| c.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: `prog` is a valid out-pointer; `src`, `name` and every header source and name are
    // NUL-terminated C strings that live until the end of this function (after the program is
    // destroyed); the two header arrays hold exactly `HEADERS.len()` pointers each, in the same
    // order (source i is included as name i). NVRTC copies what it needs.
    let st = unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            name.as_ptr(),
            HEADERS.len() as c_int,
            header_src_ptrs.as_ptr(),
            header_name_ptrs.as_ptr(),
        )
    };
    if st != sys::nvrtcResult::NVRTC_SUCCESS || prog.is_null() {
        return Err(compile_err(format!("nvrtcCreateProgram: {st:?}")));
    }
    let guard = ProgramGuard(prog);
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|c| c.as_ptr()).collect();
    // SAFETY: `guard.0` is a live program from `nvrtcCreateProgram` (destroyed only when
    // `guard` drops, before the strings it may reference); `opt_ptrs` holds exactly
    // `opt_ptrs.len()` pointers to NUL-terminated options owned by `opts`, which outlives the
    // call.
    let status = unsafe { sys::nvrtcCompileProgram(guard.0, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    let log = log_of(guard.0);
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(compile_err(format!("{status:?}\n{log}")));
    }
    let mut size = 0usize;
    // SAFETY: `guard.0` is live and compiled; `size` is a valid out-pointer for one usize.
    let st = unsafe { sys::nvrtcGetCUBINSize(guard.0, &mut size) };
    if st != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return Err(compile_err(format!("nvrtcGetCUBINSize: {st:?}\n{log}")));
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` holds exactly the `size` bytes that NVRTC reported for this program's
    // cubin, so the copy stays inside the buffer.
    let st = unsafe { sys::nvrtcGetCUBIN(guard.0, cubin.as_mut_ptr() as *mut c_char) };
    if st != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(compile_err(format!("nvrtcGetCUBIN: {st:?}\n{log}")));
    }
    drop(guard);
    Ok(Compiled { id, cubin, log })
}

/// [`NVRTC_OPTIONS`] followed by `extra`, as C strings; an option with a NUL byte is an error
/// naming it.
fn c_options(extra: &[&str]) -> Result<Vec<CString>, String> {
    NVRTC_OPTIONS
        .iter()
        .chain(extra)
        .map(|o| CString::new(*o).map_err(|_| format!("the NVRTC option {o:?} contains a NUL byte")))
        .collect()
}

/// NVRTC's version as `(major, minor)`, for reports.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: two valid out-pointers to i32; the library is present (checked above).
    let st = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    (st == sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_option_with_a_nul_byte_is_a_compile_error_not_a_panic() {
        // cudarc's `compile_program` unwraps `CString::new` and panicked here.
        match compile(KernelId::Counts, &["--ptxas-options=-v", "--define-macro=X\0Y"]) {
            Err(DeviceError::Compile { kernel, log }) => {
                assert_eq!(kernel, "counts.cu");
                assert!(log.contains("NUL byte") && log.contains("X\\0Y"), "{log}");
            }
            other => panic!("expected DeviceError::Compile, got {other:?}"),
        }
    }

    #[test]
    fn options_are_the_fixed_ones_then_the_extra_ones() {
        let opts = c_options(&["-v"]).unwrap();
        assert_eq!(opts.len(), NVRTC_OPTIONS.len() + 1);
        assert_eq!(opts[0].to_str().unwrap(), NVRTC_OPTIONS[0]);
        assert_eq!(opts.last().unwrap().to_str().unwrap(), "-v");
    }
}
