//! Validated problem types for every operation of SPEC §5.
//!
//! A problem describes shapes and options; its constructor rejects every malformed shape, so a
//! backend holding one can trust it. The `check_*` methods validate the caller's buffers (lengths,
//! scale kinds) and the data-dependent inputs (`counts`, `topk_ids`) before any work starts; every
//! backend calls them first, so nothing is ever half-written.
//!
//! One file per concern: `checks` (the shape and buffer checks they share), `quant` (the
//! quantization problems), `gemm` (the grouped GEMM and the experts stage), `routing` (prepare,
//! finalize and `Routing`), `router` (the router that makes `topk_ids`).

mod checks;
mod gate;
mod gemm;
mod quant;
mod router;
mod routing;

pub use checks::{check_counts, check_len, clamp_count};
pub use gate::{finish_logit, gate_logit, Gate, GATE_NAN_BITS};
pub use gemm::{ExpertsInputs, ExpertsStage, GemmInputs, GroupedGemm, WeightsRef, WorkspaceShapes};
pub use quant::{Activation, BatchedTokenGroupQuant, BlockQuant, SiluMulQuant, TokenGroupQuant};
pub use router::{rank_index, rank_key, Route, RouterConfig, Scoring};
pub use routing::{Finalize, Prepare, Routing, RoutingDims};
