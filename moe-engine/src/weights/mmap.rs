//! A read-only memory map of a file, the one `unsafe` of the engine.

use std::path::{Path, PathBuf};

use crate::error::EngineError;

/// A file mapped read-only into memory: its bytes are paged in as they are read, so parsing a
/// safetensors header or reading one tensor of a large checkpoint touches only those pages.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    // `None` for an empty file, which cannot be mapped on every platform.
    map: Option<memmap2::Mmap>,
}

impl MappedFile {
    /// Maps the file at `path`, or [`EngineError::ReadInput`] naming it.
    ///
    /// The file must not be truncated or modified while the map lives (another process writing
    /// it would change the bytes under a shared borrow); the engine opens input files that it
    /// does not write, and writes its outputs through a temporary file and a rename, so its own
    /// outputs never replace a file that is mapped.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let read_err = |source| EngineError::ReadInput {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let len = file.metadata().map_err(read_err)?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only and private to this process; the documented
            // precondition above (no concurrent truncation or modification of the file) is
            // what makes the shared `&[u8]` it hands out stable for its lifetime. The map's
            // length is the file's length at open, so every byte of the slice is backed.
            Some(unsafe { memmap2::Mmap::map(&file) }.map_err(read_err)?)
        };
        Ok(Self {
            path: path.to_path_buf(),
            map,
        })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_file_and_an_empty_file() {
        let dir = std::env::temp_dir().join(format!("moe-engine-mmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.bin"), dir.join("empty.bin"));
        std::fs::write(&a, [1u8, 2, 3]).unwrap();
        std::fs::write(&b, []).unwrap();
        assert_eq!(MappedFile::open(&a).unwrap().bytes(), &[1, 2, 3]);
        assert!(MappedFile::open(&b).unwrap().bytes().is_empty());
        let missing = MappedFile::open(&dir.join("missing")).unwrap_err();
        assert!(missing.is_input() && missing.to_string().contains("missing"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
