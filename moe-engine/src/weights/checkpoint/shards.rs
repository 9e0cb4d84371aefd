//! The weight files of a checkpoint: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists, each memory-mapped and its header parsed on first use.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use super::error::CheckpointError;
use crate::error::EngineError;
use crate::weights::safetensors::{Header, HeaderError, RawTensor};
use crate::weights::MappedFile;

/// The single-file layout's weights.
pub(super) const SINGLE_FILE: &str = "model.safetensors";
/// The sharded layout's index.
pub(super) const INDEX_FILE: &str = "model.safetensors.index.json";

/// One weight file: its path, and once opened, its map and parsed header.
#[derive(Debug)]
struct Shard {
    path: PathBuf,
    open: OnceLock<Open>,
}

#[derive(Debug)]
struct Open {
    map: MappedFile,
    header: Header,
}

/// Where every tensor lives, and the files, opened lazily.
#[derive(Debug)]
pub(super) struct Shards {
    files: Vec<Shard>,
    /// Tensor name to index in `files`; `None` for the single-file layout (everything in file 0).
    map: Option<HashMap<String, usize>>,
    /// The index's path, for messages (`None` for the single-file layout).
    index: Option<PathBuf>,
}

/// Where a tensor was looked up, and what was found there.
pub(super) struct Found<'a> {
    /// The file's path, for messages.
    pub file: &'a Path,
    /// The tensor, if the file has it.
    pub tensor: Option<RawTensor<'a>>,
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

impl Shards {
    /// Finds the weight files of `dir`: the index and the shards it names (each must exist), or
    /// the single file. Nothing is mapped yet.
    pub fn find(dir: &Path) -> Result<Self, EngineError> {
        let index = dir.join(INDEX_FILE);
        if index.exists() {
            return Self::from_index(dir, &index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Ok(Self {
                files: vec![Shard {
                    path: single,
                    open: OnceLock::new(),
                }],
                map: None,
                index: None,
            });
        }
        Err(CheckpointError::NoWeights { dir: display(dir) }.into())
    }

    fn from_index(dir: &Path, index: &Path) -> Result<Self, EngineError> {
        let file = display(index);
        let text = std::fs::read_to_string(index).map_err(|source| EngineError::ReadInput {
            path: file.clone(),
            source,
        })?;
        let bad = |reason: String| CheckpointError::BadIndex {
            file: file.clone(),
            reason,
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| CheckpointError::Json {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        let Some(weight_map) = v.get("weight_map").and_then(Value::as_object) else {
            return Err(bad("no `weight_map` object".into()).into());
        };
        // The shards in name order (`model-00001-of-…` first), each checked to exist.
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (tensor, shard) in weight_map {
            let Some(shard) = shard.as_str() else {
                return Err(bad(format!("weight_map[`{tensor}`] = {shard} is not a file name")).into());
            };
            if Path::new(shard).file_name().is_none_or(|n| n != shard) {
                return Err(bad(format!(
                    "weight_map[`{tensor}`] = `{shard}` is not a plain file name of the checkpoint directory"
                ))
                .into());
            }
            names.insert(shard, 0);
        }
        let mut files = Vec::with_capacity(names.len());
        for (i, (shard, slot)) in names.iter_mut().enumerate() {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(CheckpointError::MissingShard {
                    index: file.clone(),
                    shard: display(&path),
                }
                .into());
            }
            files.push(Shard {
                path,
                open: OnceLock::new(),
            });
            *slot = i;
        }
        let map = weight_map
            .iter()
            .filter_map(|(tensor, shard)| Some((tensor.clone(), names[shard.as_str()?])))
            .collect();
        Ok(Self {
            files,
            map: Some(map),
            index: Some(index.to_path_buf()),
        })
    }

    /// The weight files' paths.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|s| s.path.as_path())
    }

    /// Looks `name` up: the file the index (or the single-file layout) places it in, mapped and
    /// its header parsed on first use, and the tensor if that file has it.
    pub fn lookup(&self, name: &str) -> Result<Found<'_>, EngineError> {
        let i = match &self.map {
            None => 0,
            Some(map) => *map.get(name).ok_or_else(|| CheckpointError::NotInIndex {
                tensor: name.to_string(),
                index: self.index.as_deref().map(display).unwrap_or_default(),
            })?,
        };
        let shard = &self.files[i];
        let open = shard.open()?;
        Ok(Found {
            file: &shard.path,
            tensor: open.header.tensor(open.map.bytes(), name),
        })
    }
}

impl Shard {
    fn open(&self) -> Result<&Open, EngineError> {
        if let Some(o) = self.open.get() {
            return Ok(o);
        }
        let map = MappedFile::open(&self.path)?;
        let file = display(&self.path);
        let header = Header::parse(map.bytes()).map_err(|e| match e {
            HeaderError::Truncated(_) => CheckpointError::TruncatedShard {
                file,
                reason: e.to_string(),
            },
            HeaderError::Malformed(reason) => CheckpointError::MalformedShard { file, reason },
        })?;
        // Two threads may open the same shard at once; the first map kept wins, the other is dropped.
        Ok(self.open.get_or_init(|| Open { map, header }))
    }
}
