//! Helpers shared by the integration tests: temporary directories, safetensors files written
//! with the `safetensors` crate, and the built `moe` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use half::bf16;
use moe_engine::rng::Rng;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A fresh, empty directory for one test.
pub fn tmp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
pub struct T {
    pub name: &'static str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub fn bf16_t(name: &'static str, shape: &[usize], v: &[bf16]) -> T {
    T {
        name,
        dtype: Dtype::BF16,
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
    }
}
pub fn f32_t(name: &'static str, shape: &[usize], v: &[f32]) -> T {
    T {
        name,
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}
pub fn i32_t(name: &'static str, shape: &[usize], v: &[i32]) -> T {
    T {
        name,
        dtype: Dtype::I32,
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}
pub fn f8_t(name: &'static str, shape: &[usize], v: &[u8]) -> T {
    T {
        name,
        dtype: Dtype::F8_E4M3,
        shape: shape.to_vec(),
        bytes: v.to_vec(),
    }
}

/// The safetensors bytes of `tensors`.
pub fn st_bytes(tensors: &[T]) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|t| (t.name, TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Writes `tensors` to `dir/name`.
pub fn write_st(dir: &Path, name: &str, tensors: &[T]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, st_bytes(tensors)).unwrap();
    p
}

/// Runs the `moe` binary.
pub fn moe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe")).args(args).output().expect("run moe")
}

/// Reads every tensor of a safetensors file as (dtype, shape, bytes), sorted by name.
pub fn read_st(path: &Path) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Sorts expected tensors like [`read_st`].
pub fn sorted(mut v: Vec<T>) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    v.sort_by(|a, b| a.name.cmp(b.name));
    v.into_iter().map(|t| (t.name.to_string(), t.dtype, t.shape, t.bytes)).collect()
}

/// Random bf16 values on (-2, 2).
pub fn rand_bf16(rng: &mut Rng, n: usize) -> Vec<bf16> {
    (0..n).map(|_| bf16::from_f32((rng.unit_positive() - 0.5) * 4.0)).collect()
}

/// Random f32 values on (-2, 2).
pub fn rand_f32(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (rng.unit_positive() - 0.5) * 4.0).collect()
}

/// Random finite E4M3 bytes (no NaN codes).
pub fn rand_f8(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| loop {
            let b = (rng.next_u64() & 0xFF) as u8;
            if b & 0x7F != 0x7F {
                break b;
            }
        })
        .collect()
}

/// Random positive scales.
pub fn rand_scales(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.unit_positive() * 0.01 + 0.001).collect()
}

/// Runs the `moe` binary, killing it after `secs` seconds (a hang is a test failure, not a
/// stuck suite). Its output must be small (the pipes are read after it exits).
pub fn moe_within(args: &[&str], secs: u64) -> Output {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run moe");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().expect("wait for moe").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect moe");
            panic!(
                "`moe {}` did not finish within {secs} s; stderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect moe")
}
