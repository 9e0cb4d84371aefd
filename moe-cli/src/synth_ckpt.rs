//! `moe synth-checkpoint --preset NAME --out DIR [--dtype fp8|bf16] [--seed N]`: writes a
//! synthetic Hugging Face checkpoint (`moe_engine::weights::checkpoint::synth`), reporting
//! progress on stderr and the files written on stdout.
//!
//! Exit code 0 on success, 2 for an unknown preset or dtype or an existing non-empty `DIR`
//! (one line on stderr), 1 if writing failed (nothing is left at `DIR` then).

use std::path::PathBuf;
use std::sync::Mutex;

use moe_engine::weights::checkpoint::synth::{self, Preset, SynthProgress, WeightDtype};
use moe_engine::{EngineError, InputError};

/// Arguments of `moe synth-checkpoint`.
#[derive(clap::Args, Debug)]
pub struct SynthCheckpointArgs {
    /// deepseek-v3-mini (3 layers, 2 shards, FP8), qwen3-moe-mini (2 layers, one file, BF16) or
    /// deepseek-v3-layer (one full DeepSeek-V3 MoE layer, about 11 GB of FP8).
    #[arg(long)]
    preset: String,
    /// The checkpoint directory to create; it must not exist or be empty (written atomically).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The weights' dtype, fp8 or bf16 (default: the preset's).
    #[arg(long)]
    dtype: Option<String>,
    /// The seed of every value.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> String {
    all.iter().map(|&x| name(x)).collect::<Vec<_>>().join(", ")
}

/// Bytes in decimal units, as file sizes are usually quoted.
fn size(b: u64) -> String {
    match b {
        0..1_000 => format!("{b} B"),
        1_000..1_000_000 => format!("{:.1} kB", b as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        _ => format!("{:.2} GB", b as f64 / 1e9),
    }
}

/// Runs the command.
pub fn run(a: SynthCheckpointArgs) -> Result<(), EngineError> {
    super::set_threads(a.threads)?;
    let preset = Preset::from_name(&a.preset).ok_or_else(|| {
        InputError::Usage(format!(
            "unknown preset `{}` (expected {})",
            a.preset,
            names(&Preset::ALL, Preset::name)
        ))
    })?;
    let dtype = match &a.dtype {
        None => preset.default_dtype(),
        Some(d) => WeightDtype::from_name(d).ok_or_else(|| {
            InputError::Usage(format!(
                "unknown dtype `{d}` (expected {})",
                names(&WeightDtype::ALL, WeightDtype::name)
            ))
        })?,
    };
    // One line per file started and per tenth of the checkpoint.
    let last = Mutex::new((0usize, 0u64));
    let progress = |p: &SynthProgress| {
        let tenth = p.bytes_done * 10 / p.bytes_total.max(1);
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if (p.shard, tenth) != *last {
            *last = (p.shard, tenth);
            eprintln!(
                "moe synth-checkpoint: {} ({}/{}): {} of {} ({}%)",
                p.file,
                p.shard,
                p.shards,
                size(p.bytes_done),
                size(p.bytes_total),
                p.bytes_done * 100 / p.bytes_total.max(1)
            );
        }
    };
    let report = synth::write_checkpoint(&preset.spec(), dtype, a.seed, &a.out, &progress)?;
    println!(
        "wrote {} ({}, {}, seed {}): {} tensors, {}",
        report.dir.display(),
        preset.name(),
        dtype.name(),
        a.seed,
        report.tensors,
        size(report.tensor_bytes)
    );
    for (f, len) in &report.files {
        println!("  {f}  {}", size(*len));
    }
    Ok(())
}
