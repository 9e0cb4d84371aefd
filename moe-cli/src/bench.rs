//! `moe bench`: parses the flags, runs `moe_engine::bench` with a progress bar, renders the
//! table and writes the JSON and SVG files. `--validate FILE` checks a JSON document against the
//! documented schema instead (CI runs it on the CPU smoke output).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use moe_engine::bench::{self, cases, schema, svg, BenchConfig, Counts, GemmKernel, Suite};
use moe_engine::{Device, DeviceKind, EngineError, InputError};

fn suite_parser() -> impl TypedValueParser<Value = Suite> {
    PossibleValuesParser::new(Suite::ALL.map(Suite::name)).map(|s| Suite::from_name(&s).expect("a listed name"))
}

fn counts_parser() -> impl TypedValueParser<Value = Counts> {
    PossibleValuesParser::new(Counts::ALL.map(Counts::name)).map(|s| Counts::from_name(&s).expect("a listed name"))
}

/// Flags of `moe bench`.
#[derive(Debug, Args)]
#[command(
    after_help = "Suites: deepgemm (DeepGEMM's masked GEMM shapes, all live and around the mean), decode (E 8/32/256 x 1/16/64 rows, both GEMMs), \
silu (SiLU-mul-quant, random counts), quant (prepare's quantization, finalize, block quantization), stage (the experts stage, router counts). \
`layer` is not yet available (it reports itself as skipped). On the CPU every shape is divided by 8."
)]
pub struct BenchArgs {
    /// A suite to run (several allowed).
    #[arg(long = "suite", value_parser = suite_parser())]
    suites: Vec<Suite>,
    /// A custom case, KIND:DIMS: gemm:E,T,N,K | silu:E,T,H | stage:E,T,K,I | prepare:M,K,TOPK,E,T | finalize:M,K,TOPK,E,T | block-quant:E,R,C (several allowed).
    #[arg(long = "shape")]
    shapes: Vec<String>,
    /// Live-count distribution of the --shape cases.
    #[arg(long, default_value = "all-live", value_parser = counts_parser())]
    counts: Counts,
    /// Backend.
    #[arg(long, default_value = "cuda", value_parser = PossibleValuesParser::new(DeviceKind::ALL.map(DeviceKind::name)).map(|s| DeviceKind::from_name(&s).expect("a listed name")))]
    backend: DeviceKind,
    /// Flushed samples per unit (as many warm samples follow); at least 30 for a report.
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// Warm-up runs per unit.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Seed of every input.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tiny shapes and buffers (a smoke run; the figures mean nothing).
    #[arg(long)]
    tiny: bool,
    /// Bytes of the GPU's L2 flush (at least 256 MiB).
    #[arg(long, default_value_t = 512 << 20)]
    flush_bytes: usize,
    /// The CUDA GEMM kernel of the GEMM and stage cases: mma-sync (the backend's, SPEC §5.3's
    /// bound) or wgmma (opt-in, its own looser bound; docs/numerics.md).
    #[arg(long, default_value = "mma-sync", value_parser = PossibleValuesParser::new(GemmKernel::ALL.map(GemmKernel::name)).map(|s| GemmKernel::from_name(&s).expect("a listed name")))]
    gemm: GemmKernel,
    /// Write the report as JSON (docs/bench-schema.md).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the roofline as SVG.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Validate FILE against the JSON schema and exit (runs nothing).
    #[arg(long, value_name = "FILE")]
    validate: Option<PathBuf>,
}

fn write(path: &PathBuf, data: &str) -> Result<(), EngineError> {
    std::fs::write(path, data).map_err(|source| EngineError::WriteOutput {
        path: path.display().to_string(),
        source,
    })
}

fn validate(path: &PathBuf) -> Result<(), EngineError> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::ReadInput {
        path: path.display().to_string(),
        source,
    })?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| InputError::Usage(format!("{}: not JSON: {e}", path.display())))?;
    schema::validate(&doc).map_err(|e| InputError::Usage(format!("{}: does not follow the schema:\n{e}", path.display())))?;
    let rows = doc["rows"].as_array().map_or(0, Vec::len);
    println!(
        "{}: valid (schema_version {}, {rows} rows)",
        path.display(),
        bench::report::SCHEMA_VERSION
    );
    Ok(())
}

fn run_bench(a: BenchArgs) -> Result<bool, EngineError> {
    if let Some(p) = &a.validate {
        validate(p)?;
        return Ok(true);
    }
    if a.backend != DeviceKind::Cuda && a.gemm != GemmKernel::MmaSync {
        return Err(InputError::Usage(format!(
            "--gemm {} picks a CUDA GEMM kernel: it needs --backend cuda",
            a.gemm.name()
        ))
        .into());
    }
    let shapes = a.shapes.iter().map(|s| cases::parse_shape(s)).collect::<Result<Vec<_>, _>>()?;
    let cfg = BenchConfig {
        suites: a.suites,
        shapes,
        counts: a.counts,
        samples: a.samples,
        warmup: a.warmup,
        seed: a.seed,
        tiny: a.tiny,
        flush_bytes: a.flush_bytes,
        gemm_kernel: a.gemm,
    };
    let device = Device::open(a.backend)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(1);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}] {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let progress = |done: usize, total: usize, label: &str| match &bar {
        Some(b) => {
            b.set_length(total as u64);
            b.set_position(done as u64);
            b.set_message(label.to_string());
        }
        None => eprintln!("moe bench: [{done}/{total}] {label}"),
    };
    let report = bench::run(&cfg, &device, &progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = report?;
    print!("{}", report.render());
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&report.to_json()).expect("a JSON value serializes");
        write(p, &text)?;
    }
    if let Some(p) = &a.svg {
        let doc = svg::roofline_svg(&report).map_err(|e| InputError::Usage(format!("drawing the roofline: {e}")))?;
        write(p, &doc)?;
    }
    Ok(report.passed())
}

/// Runs `moe bench`; exit code 1 when a check failed, 2 for bad input.
pub fn run(a: BenchArgs) -> ExitCode {
    match run_bench(a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("moe: error: a bench check failed (see CHECK FAILED above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("moe: error: {}", e.one_line());
            ExitCode::from(if e.is_input() { 2 } else { 1 })
        }
    }
}
