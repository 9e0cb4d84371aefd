//! Weights and tensor files: the seeded synthetic generator of the pipeline ([`synth`]) and the
//! safetensors reader and writer of `moe op` ([`safetensors`]), which reads files through a
//! memory map ([`MappedFile`]) rather than whole-file reads. Checkpoint loading grows here.

pub mod safetensors;
pub mod synth;

mod mmap;

pub use mmap::MappedFile;
