//! The streaming safetensors writer: the header is written first (8-byte little-endian length,
//! then the JSON with each tensor's dtype, shape and data offsets, padded with spaces to a
//! multiple of 8), then the data tensor by tensor, generated in parallel in batches of at most
//! [`BATCH_BYTES`] while the previous batch is written, so no file is ever whole in memory.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::sync_channel;

use rayon::prelude::*;

use super::plan::Planned;
use super::{Sharding, SynthProgress};
use crate::error::EngineError;

/// The most bytes generated at once (one tensor larger than this is generated alone).
const BATCH_BYTES: u64 = 256 << 20;

/// One output file and the tensors it holds.
#[derive(Debug)]
pub(super) struct ShardPlan<'a> {
    pub file: String,
    pub tensors: Vec<&'a Planned>,
}

/// Splits the tensors, in order, into files named as Hugging Face names them:
/// `model.safetensors`, or `model-00001-of-0000N.safetensors`.
pub(super) fn shard(tensors: &[Planned], sharding: Sharding) -> Vec<ShardPlan<'_>> {
    let sizes: Vec<u64> = tensors.iter().map(Planned::bytes).collect();
    let total: u64 = sizes.iter().sum();
    let mut index = Vec::with_capacity(tensors.len());
    match sharding {
        Sharding::Single => index.resize(tensors.len(), 0),
        Sharding::Count(n) => {
            // Tensor i goes to the shard its first byte falls in, of n equal parts.
            let n = n.max(1) as u128;
            let mut start = 0u64;
            for s in &sizes {
                index.push((start as u128 * n / (total.max(1) as u128)) as usize);
                start += s;
            }
        }
        Sharding::MaxBytes(max) => {
            let (mut shard, mut used) = (0usize, 0u64);
            for &s in &sizes {
                if used > 0 && used + s > max {
                    shard += 1;
                    used = 0;
                }
                used += s;
                index.push(shard);
            }
        }
    }
    // Renumber the shards that received tensors consecutively.
    let mut groups: Vec<Vec<&Planned>> = Vec::new();
    let mut last = None;
    for (t, i) in tensors.iter().zip(index) {
        if last != Some(i) {
            groups.push(Vec::new());
            last = Some(i);
        }
        groups.last_mut().expect("pushed above").push(t);
    }
    let n = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, tensors)| ShardPlan {
            file: match sharding {
                Sharding::Single => super::super::shards::SINGLE_FILE.to_string(),
                _ => format!("model-{:05}-of-{n:05}.safetensors", i + 1),
            },
            tensors,
        })
        .collect()
}

/// The header of a file holding `tensors` in that order: the 8-byte length and the JSON.
fn header(tensors: &[&Planned]) -> Vec<u8> {
    let mut json = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.bytes();
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        json.push_str(&format!(
            r#",{}:{{"dtype":"{:?}","shape":[{}],"data_offsets":[{offset},{end}]}}"#,
            serde_json::Value::String(t.name.clone()),
            t.dtype,
            shape.join(",")
        ));
        offset = end;
    }
    json.push('}');
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

/// Consecutive tensors of at most [`BATCH_BYTES`] together (or one larger tensor).
fn batches<'a>(tensors: &'a [&'a Planned]) -> Vec<&'a [&'a Planned]> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0u64);
    for (i, t) in tensors.iter().enumerate() {
        if i > start && used + t.bytes() > BATCH_BYTES {
            out.push(&tensors[start..i]);
            (start, used) = (i, 0);
        }
        used += t.bytes();
    }
    if start < tensors.len() {
        out.push(&tensors[start..]);
    }
    out
}

/// Generates a batch's bytes, each tensor in parallel.
fn generate(batch: &[&Planned]) -> Result<Vec<u8>, EngineError> {
    let total: u64 = batch.iter().map(|t| t.bytes()).sum();
    let mut buf = crate::error::try_filled("synthetic tensor data", total as usize, 0u8)?;
    let mut parts: Vec<&mut [u8]> = Vec::with_capacity(batch.len());
    let mut rest = buf.as_mut_slice();
    for t in batch {
        let (part, tail) = rest.split_at_mut(t.bytes() as usize);
        parts.push(part);
        rest = tail;
    }
    parts
        .into_par_iter()
        .zip(batch.par_iter())
        .try_for_each(|(o, t)| t.source.generate(o))?;
    Ok(buf)
}

/// Writes one shard at `path`: the header, then the batches, generated on rayon's threads while
/// a writer thread writes the previous one; `done` is the checkpoint's byte count so far, for
/// the progress reports.
pub(super) fn write_shard(
    path: &Path,
    shard: &ShardPlan<'_>,
    index: (usize, usize),
    done: &mut u64,
    total: u64,
    progress: &(dyn Fn(&SynthProgress) + Sync),
) -> Result<(), EngineError> {
    let werr = |source| EngineError::WriteOutput {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::create(path).map_err(werr)?;
    file.write_all(&header(&shard.tensors)).map_err(werr)?;
    let (tx, rx) = sync_channel::<Vec<u8>>(1);
    let written = std::thread::scope(|s| {
        let writer = s.spawn(move || -> std::io::Result<File> {
            for buf in rx {
                file.write_all(&buf)?;
            }
            file.sync_all()?;
            Ok(file)
        });
        let generated = (|| {
            for batch in batches(&shard.tensors) {
                let buf = generate(batch)?;
                *done += buf.len() as u64;
                if tx.send(buf).is_err() {
                    // The writer stopped on an error, which its join reports.
                    break;
                }
                progress(&SynthProgress {
                    file: shard.file.clone(),
                    shard: index.0,
                    shards: index.1,
                    bytes_done: *done,
                    bytes_total: total,
                });
            }
            Ok::<(), EngineError>(())
        })();
        drop(tx);
        let w = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the writer thread panicked")));
        generated.map(|()| w)
    })?;
    written.map(drop).map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::super::source::Source;
    use super::*;
    use safetensors::Dtype;

    fn t(name: &str, n: usize) -> Planned {
        Planned {
            name: name.into(),
            dtype: Dtype::F8_E4M3,
            shape: vec![n],
            source: Source::HashE4m3 { key: n as u64 },
        }
    }

    #[test]
    fn shards_split_in_order_and_are_named_like_hugging_face() {
        let ts: Vec<Planned> = (0..10).map(|i| t(&format!("t{i}"), 100)).collect();
        let two = shard(&ts, Sharding::Count(2));
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].file, "model-00001-of-00002.safetensors");
        assert_eq!((two[0].tensors.len(), two[1].tensors.len()), (5, 5));
        let by_size = shard(&ts, Sharding::MaxBytes(350));
        assert_eq!(by_size.iter().map(|s| s.tensors.len()).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        assert_eq!(by_size[3].file, "model-00004-of-00004.safetensors");
        let one = shard(&ts, Sharding::Single);
        assert_eq!((one.len(), one[0].file.as_str()), (1, "model.safetensors"));
        // A tensor larger than the limit gets a file of its own.
        let big = vec![t("a", 10), t("b", 1000), t("c", 10)];
        assert_eq!(shard(&big, Sharding::MaxBytes(100)).len(), 3);
    }

    #[test]
    fn written_file_parses_with_the_safetensors_crate() {
        let ts = [t("x.weight", 3), t("y", 8), t("a\"b", 17)];
        let dir = std::env::temp_dir().join(format!("moe-engine-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plan = ShardPlan {
            file: "f.safetensors".into(),
            tensors: ts.iter().collect(),
        };
        let mut done = 0;
        write_shard(&dir.join("f.safetensors"), &plan, (1, 1), &mut done, 28, &|_| {}).unwrap();
        assert_eq!(done, 28);
        let bytes = std::fs::read(dir.join("f.safetensors")).unwrap();
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()) % 8, 0);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for p in &ts {
            let v = st.tensor(&p.name).unwrap();
            let mut expected = vec![0u8; p.bytes() as usize];
            p.source.generate(&mut expected).unwrap();
            assert_eq!((v.dtype(), v.shape(), v.data()), (p.dtype, &p.shape[..], &expected[..]));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
