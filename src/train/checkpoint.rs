//! Checkpoint files of a run (safetensors), written atomically through
//! [`crate::fsio`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::error::{Error, Result};

pub use crate::fsio::atomic_write;
use crate::fsio::{commit, temp_path};

/// Saves named tensors as safetensors at `path`, atomically.
pub fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let tmp = temp_path(path);
    candle_core::safetensors::save(tensors, &tmp)?;
    commit(&tmp, path)
}

/// Loads a safetensors file onto the CPU; a missing or corrupt file is an error
/// that names it.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        line: 0,
        msg: format!("not a readable safetensors file: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let t = Tensor::new(&[1f32, 2.5, -3.0], &candle_core::Device::Cpu).unwrap();
        save_tensors(&p, &HashMap::from([("w".to_string(), t)])).unwrap();
        let back = load_tensors(&p).unwrap();
        assert_eq!(back["w"].to_vec1::<f32>().unwrap(), vec![1.0, 2.5, -3.0]);
        std::fs::write(&p, b"garbage").unwrap();
        assert!(load_tensors(&p).unwrap_err().to_string().contains("model.safetensors"));
    }
}
