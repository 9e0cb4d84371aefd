//! # moe
//!
//! The command line of moe-fp8.
//!
//! - `moe run`: the main job. A seeded synthetic DeepSeek-V3-shaped expert layer (by default
//!   E = 8 local experts, T = 64, K = 7168, I = 2048, 64 tokens, top-8) through weight
//!   quantization, prepare, the batched experts stage and finalize on the chosen backend; prints
//!   each stage's time and throughput and the verdict of the check against the naive reference.
//!   Exit code 1 if the check fails.
//! - `moe op <name> --in IN --out OUT`: one operation on safetensors files (SPEC §8). Bad input
//!   is one line on stderr naming the tensor and exit code 2; nothing is written to `OUT` then.
//! - `moe info`: version, compiled backends, thread count, CUDA devices.
//! - `moe bench --suite NAME [--json FILE] [--svg FILE]`: timings against ceilings measured in
//!   the same run and the cuBLASLt baseline (`docs/benchmarks.md`); `--backend cpu` times the CPU
//!   with smaller shapes.
//! - `moe synth-checkpoint --preset NAME --out DIR`: a synthetic Hugging Face checkpoint
//!   (DeepSeek-V3 or Qwen3-MoE layout, FP8 or BF16) for the checkpoint loader.
//!
//! Exit codes: 0 success; 1 a failed check, a device error or an unwritable output; 2 bad input
//! or usage (as clap's own usage errors).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use moe_core::{Numerics, ScaleFormat, Scoring};
use moe_engine::weights::{safetensors as st, MappedFile};
use moe_engine::{device, pipeline, Device, DeviceKind, EngineError, InputError, Op, OpOptions, RunConfig};

mod bench;
mod diff;
mod layer;
mod synth_ckpt;

/// Exit code of an input or usage error (the same as clap's for a bad command line).
const EXIT_INPUT: u8 = 2;
/// Exit code of every other failure: a failed check, a device error, an I/O error on the output.
const EXIT_FAILURE: u8 = 1;

/// `--backend cpu|cuda`, listed in `--help`.
fn device_parser() -> impl TypedValueParser<Value = DeviceKind> {
    PossibleValuesParser::new(DeviceKind::ALL.map(DeviceKind::name)).map(|s| DeviceKind::from_name(&s).expect("a listed name"))
}

/// An operation of `moe op`: one on tensors alone, or a checkpoint's `layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpName {
    File(Op),
    Layer,
}

/// The operations of `moe op` (SPEC §8), listed in `--help`.
fn op_parser() -> impl TypedValueParser<Value = OpName> {
    let names: Vec<&'static str> = Op::FILE_OPS.iter().map(|o| o.name()).chain(["layer"]).collect();
    PossibleValuesParser::new(names).map(|s| match Op::from_name(&s) {
        Some(op) => OpName::File(op),
        None => OpName::Layer,
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "moe",
    version,
    about = "FP8 block-quantized Mixture-of-ExpertsStage expert stage: run, check and call its operations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a synthetic DeepSeek-V3-shaped expert layer, time every stage and check it against the naive reference.
    Run(RunArgs),
    /// Run one operation on tensors read from a safetensors file (SPEC §8).
    Op(OpArgs),
    /// Print the version, the compiled backends, the thread count and the CUDA devices.
    Info,
    /// Compare a backend with the naive CPU reference on seeded random cases of every operation.
    Diff(diff::DiffArgs),
    /// Time every GPU stage against ceilings measured in the same run and the cuBLASLt baseline (JSON, SVG roofline).
    Bench(bench::BenchArgs),
    /// Write a synthetic Hugging Face checkpoint (DeepSeek-V3 or Qwen3-MoE layout) for the checkpoint loader.
    SynthCheckpoint(synth_ckpt::SynthCheckpointArgs),
    /// Run real MoE layers of a Hugging Face checkpoint, check each stage against the CPU reference, and time them.
    Layer(layer::LayerArgs),
}

fn parse_scale_fmt(s: &str) -> Result<ScaleFormat, String> {
    ScaleFormat::from_name(s).ok_or_else(|| format!("unknown scale format `{s}` (expected f32, f32-ceil-ue8m0 or ue8m0-packed)"))
}

fn parse_numerics(s: &str) -> Result<Numerics, String> {
    Numerics::from_name(s).ok_or_else(|| format!("unknown numerics `{s}` (expected vllm-bf16 or f32)"))
}

fn parse_scoring(s: &str) -> Result<Scoring, String> {
    Scoring::from_name(s).ok_or_else(|| format!("unknown scoring `{s}` (expected sigmoid or softmax)"))
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Local experts E.
    #[arg(long, default_value_t = 8)]
    experts: usize,
    /// Capacity T (max tokens per expert).
    #[arg(long, default_value_t = 64)]
    capacity: usize,
    /// Hidden size K (a multiple of 128).
    #[arg(long, default_value_t = 7168)]
    hidden: usize,
    /// Expert intermediate size I (a multiple of 128).
    #[arg(long, default_value_t = 2048)]
    intermediate: usize,
    /// Tokens M.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Router slots per token (ids of experts on other ranks are -1).
    #[arg(long, default_value_t = 8)]
    topk: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Activation scale format (ceil formats also give power-of-two weight scales).
    #[arg(long, default_value = "f32", value_parser = parse_scale_fmt)]
    scale_fmt: ScaleFormat,
    /// SiLU-mul-quant arithmetic.
    #[arg(long, default_value = "vllm-bf16", value_parser = parse_numerics)]
    numerics: Numerics,
    /// Backend.
    #[arg(long, default_value = "cpu", value_parser = device_parser())]
    backend: DeviceKind,
    /// Worker threads of the CPU work (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Random live rows per expert whose GEMM outputs the naive reference recomputes, besides
    /// each expert's first and last live row, which are always recomputed.
    #[arg(long, default_value_t = 2)]
    check_rows: usize,
    /// Run every MoE layer of this Hugging Face checkpoint instead of the synthetic layer (as
    /// `moe layer --checkpoint DIR`, with `--tokens`, `--seed`, `--scale-fmt`, `--numerics`, `--backend`).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["experts", "capacity", "hidden", "intermediate", "topk", "check_rows"])]
    checkpoint: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct OpArgs {
    /// The operation.
    #[arg(value_parser = op_parser())]
    name: OpName,
    /// Input safetensors file.
    #[arg(long = "in", value_name = "IN.safetensors")]
    input: PathBuf,
    /// Output safetensors file (written atomically; untouched on error).
    #[arg(long = "out", value_name = "OUT.safetensors")]
    output: PathBuf,
    /// Backend.
    #[arg(long, default_value = "cpu", value_parser = device_parser())]
    backend: DeviceKind,
    /// Activation scale format (token-group-quant, silu-mul-quant, grouped-gemm, experts, prepare).
    #[arg(long, default_value = "f32", value_parser = parse_scale_fmt)]
    scale_fmt: ScaleFormat,
    /// SiLU-mul-quant arithmetic (silu-mul-quant, experts).
    #[arg(long, default_value = "vllm-bf16", value_parser = parse_numerics)]
    numerics: Numerics,
    /// block-quant: ceil every weight scale to a power of two (UE8M0 weights, as DeepSeek-V3.1).
    #[arg(long)]
    pow2: bool,
    /// prepare: the number of local experts E.
    #[arg(long)]
    experts: Option<usize>,
    /// prepare: the capacity T.
    #[arg(long)]
    capacity: Option<usize>,
    /// route: experts per token k (num_experts_per_tok).
    #[arg(long)]
    topk: Option<usize>,
    /// route: how logits become scores (scoring_func).
    #[arg(long, value_parser = parse_scoring)]
    scoring: Option<Scoring>,
    /// route: groups G of contiguous experts (n_group; with --topk-groups).
    #[arg(long)]
    groups: Option<usize>,
    /// route: groups kept per token TG (topk_group; with --groups).
    #[arg(long)]
    topk_groups: Option<usize>,
    /// route: divide the weights by their sum (norm_topk_prob).
    #[arg(long)]
    renormalize: bool,
    /// route: the factor every weight is multiplied by last (routed_scaling_factor; default 1).
    #[arg(long)]
    routed_scaling: Option<f32>,
    /// layer: the Hugging Face model directory.
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// layer: the layer index.
    #[arg(long)]
    layer: Option<usize>,
    /// layer: also write logits, topk_ids, topk_weights, counts, routed and shared.
    #[arg(long)]
    intermediates: bool,
    /// Worker threads of the CPU backend (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn set_threads(threads: Option<usize>) -> Result<(), EngineError> {
    if let Some(n) = threads {
        if n == 0 {
            return Err(InputError::Usage("--threads must be at least 1".into()).into());
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| InputError::Usage(format!("--threads {n}: {e}")))?;
    }
    Ok(())
}

/// Stage names on stderr: a spinner on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(std::time::Duration::from_millis(100));
            b
        });
        Self { bar }
    }
    fn stage(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => eprintln!("moe run: {msg}"),
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn cmd_run(a: RunArgs) -> Result<(), EngineError> {
    set_threads(a.threads)?;
    if let Some(dir) = a.checkpoint {
        let args = layer::LayerArgs::whole_model(dir, a.backend, a.tokens, a.seed, a.scale_fmt, a.numerics);
        return match layer::run(args)? {
            true => Ok(()),
            false => Err(EngineError::CheckFailed("a layer's stage-by-stage check".into())),
        };
    }
    let cfg = RunConfig {
        experts: a.experts,
        capacity: a.capacity,
        hidden: a.hidden,
        intermediate: a.intermediate,
        tokens: a.tokens,
        topk: a.topk,
        seed: a.seed,
        scale_fmt: a.scale_fmt,
        numerics: a.numerics,
        check_rows: a.check_rows,
        ..RunConfig::default()
    };
    pipeline::validate(&cfg)?;
    let progress = Progress::new();
    progress.stage(&format!("opening backend {}", a.backend.name()));
    let device = Device::open(a.backend)?;
    let report = pipeline::run(&cfg, &device, &|m| progress.stage(m));
    progress.finish();
    let report = report?;
    print!("{}", report.render());
    if report.passed() {
        Ok(())
    } else {
        let failed: Vec<&str> = report.checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
        Err(EngineError::CheckFailed(failed.join(", ")))
    }
}

fn cmd_op(a: OpArgs) -> Result<(), EngineError> {
    set_threads(a.threads)?;
    let op = match a.name {
        OpName::File(op) => op,
        OpName::Layer => {
            let opts = moe_engine::layer::LayerOptions {
                scale_fmt: a.scale_fmt,
                numerics: a.numerics,
                capacity: a.capacity,
                ..Default::default()
            };
            return layer::op(
                a.backend,
                a.checkpoint.as_deref(),
                a.layer,
                &a.input,
                &a.output,
                opts,
                a.intermediates,
            );
        }
    };
    let opts = OpOptions {
        scale_fmt: a.scale_fmt,
        numerics: a.numerics,
        pow2: a.pow2,
        experts: a.experts,
        capacity: a.capacity,
        topk: a.topk,
        scoring: a.scoring,
        groups: a.groups,
        topk_groups: a.topk_groups,
        renormalize: a.renormalize,
        routed_scaling: a.routed_scaling,
    };
    let file = MappedFile::open(&a.input)?;
    // Validate before opening a device, so bad input is reported as such on every machine.
    let inputs = moe_engine::read_inputs(op, &opts, file.bytes())?;
    drop(file);
    let device = Device::open(a.backend)?;
    let outputs = moe_engine::execute(&inputs, device.backend())?;
    let path = a.output.display().to_string();
    let data = st::serialize(&outputs).map_err(|e| EngineError::WriteOutput {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    st::write_atomic(&a.output, &data).map_err(|source| EngineError::WriteOutput { path, source })
}

fn cmd_info() -> Result<(), EngineError> {
    println!("moe {}", env!("CARGO_PKG_VERSION"));
    println!("backends: {}", device::compiled_backends().join(", "));
    println!("threads: {}", rayon::current_num_threads());
    println!("cuda:");
    for line in device::cuda_devices() {
        println!("  {line}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Op(a) => cmd_op(a),
        Command::Info => cmd_info(),
        Command::SynthCheckpoint(a) => synth_ckpt::run(a),
        Command::Diff(a) => return diff::run(a),
        Command::Bench(a) => return bench::run(a),
        Command::Layer(a) => match layer::run(a) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(EXIT_FAILURE),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moe: error: {}", e.one_line());
            ExitCode::from(if e.is_input() { EXIT_INPUT } else { EXIT_FAILURE })
        }
    }
}
