//! Weights and tensor files: the seeded synthetic generator of the pipeline ([`synth`]), the
//! safetensors reader and writer of `moe op` ([`safetensors`]), which reads files through a
//! memory map ([`MappedFile`]) rather than whole-file reads, and Hugging Face checkpoints
//! ([`checkpoint`]): loading a MoE layer, and writing synthetic checkpoints.

pub mod checkpoint;
pub mod safetensors;
pub mod synth;

mod mmap;

pub use mmap::MappedFile;
