//! Finding a dataset on disk and downloading it.
//!
//! Lookup order for [`locate`]:
//! 1. `--data-dir DIR` (only there, when given): each local source of the card
//!    at `DIR/<dir>` and at `DIR` itself;
//! 2. `COTEXT_DATA=DIR`, the same way;
//! 3. the Hugging Face cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`,
//!    Python `huggingface_hub`'s layout) for hub sources: a cache hit never
//!    touches the network;
//! 4. `$HF_HOME/cotext/NAME/` (default `~/.cache/huggingface/cotext/NAME/`)
//!    for URL sources.
//!
//! [`fetch`] downloads into 3 or 4 with hf-hub (`ApiBuilder::from_env()`, so
//! `HF_HOME` and `HF_ENDPOINT` are honoured) or a plain HTTPS GET, then checks
//! sizes, sha256 and counts against the card with [`verify`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use sha2::{Digest, Sha256};

use super::card::{DatasetCard, FileCard, Format, Layout, Location, SourceCard, SourceKind};
use super::dataset::{Dataset, LoadOptions, SplitData};
use super::imdb::LabelScheme;
use crate::{Error, Result};

/// Where local copies of datasets are looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// Given on the command line: look only here.
    Flag(PathBuf),
    /// From the `COTEXT_DATA` environment variable: look here, then in the caches.
    Env(PathBuf),
    /// Neither: look in the caches only.
    None,
}

impl DataDir {
    /// `--data-dir` if given, else `COTEXT_DATA` if set and non-empty, else none.
    pub fn from_flag(flag: Option<PathBuf>) -> DataDir {
        match flag {
            Some(dir) => DataDir::Flag(dir),
            None => match std::env::var_os("COTEXT_DATA") {
                Some(dir) if !dir.is_empty() => DataDir::Env(PathBuf::from(dir)),
                _ => DataDir::None,
            },
        }
    }
}

/// Whether all files of `split` that a load needs (tree files excluded) exist
/// under `root`; `false` for a split without files.
pub fn split_present(source: &SourceCard, root: &Path, split: &str) -> bool {
    let mut files = source
        .split_files(split)
        .filter(|f| f.role.as_deref() != Some("trees"))
        .peekable();
    if files.peek().is_none() {
        return false;
    }
    files.all(|f| {
        let path = root.join(&f.path);
        match source.layout {
            Layout::Aclimdb => {
                path.join(split).join("neg").is_dir() && path.join(split).join("pos").is_dir()
            }
            _ => path.is_file(),
        }
    })
}

/// How to get a dataset, for error messages.
pub fn hint(card: &DatasetCard) -> String {
    let local: Vec<String> = card
        .sources
        .iter()
        .filter_map(|s| {
            let Location::Local { dir } = &s.location else {
                return None;
            };
            let first = s.files.first()?;
            Some(if dir.is_empty() {
                format!("DIR/{}", first.path)
            } else {
                format!("DIR/{dir}/{}", first.path)
            })
        })
        .collect();
    let remote = card
        .sources
        .iter()
        .find(|s| s.kind() != SourceKind::Local)
        .map(|s| format!(" (downloads from {})", s.describe()))
        .unwrap_or_default();
    format!(
        "get it with `cotext data fetch {}`{remote}, which needs network access, or pass --data-dir DIR (or set COTEXT_DATA=DIR) where {} exists",
        card.name,
        local.join(" or ")
    )
}

/// The HF hub cache folder (`$HF_HOME/hub` or `~/.cache/huggingface/hub`).
pub fn hub_cache() -> Cache {
    Cache::from_env()
}

/// The folder for URL downloads of dataset `name`: `<HF cache>/../cotext/name`.
pub fn url_cache_dir(name: &str) -> PathBuf {
    let hub = hub_cache().path().clone();
    let home = hub.parent().map(Path::to_path_buf).unwrap_or(hub);
    home.join("cotext").join(name)
}

fn hub_repo(repo: &str, revision: Option<&str>) -> Repo {
    Repo::with_revision(
        repo.to_string(),
        RepoType::Dataset,
        revision.unwrap_or("main").to_string(),
    )
}

/// The snapshot folder of a hub source in the HF cache, if every file of at
/// least one split is cached (found through hf-hub's own cache lookup).
fn hub_cached_root(source: &SourceCard, repo: Repo) -> Option<PathBuf> {
    let repo = hub_cache().repo(repo);
    let mut root = None;
    for file in &source.files {
        if let Some(path) = repo.get(&file.path) {
            // `get` returns snapshots/<commit>/<path>: strip the path again.
            let depth = Path::new(&file.path).components().count();
            let mut snapshot = path.clone();
            for _ in 0..depth {
                snapshot.pop();
            }
            root = Some(snapshot);
            break;
        }
    }
    root
}

fn any_split_present(card: &DatasetCard, source: &SourceCard, root: &Path) -> bool {
    card.splits
        .iter()
        .any(|s| split_present(source, root, &s.name))
}

/// Finds the data of `card` (see the module docs for the order).
///
/// # Errors
/// [`Error::DatasetNotFound`] listing every place looked at and how to get
/// the data.
pub fn locate(card: &DatasetCard, data_dir: &DataDir) -> Result<Dataset> {
    let mut looked = Vec::new();
    let found = |source: &SourceCard, root: PathBuf, origin: String| Dataset {
        card: card.clone(),
        source: source.clone(),
        root,
        origin,
    };
    // A card written by `cotext data card` names its file's folder by an
    // absolute path: that folder is the data, wherever the command runs.
    for source in &card.sources {
        let Location::Local { dir } = &source.location else {
            continue;
        };
        let dir = Path::new(dir);
        if !dir.is_absolute() {
            continue;
        }
        if any_split_present(card, source, dir) {
            return Ok(found(
                source,
                dir.to_path_buf(),
                "the card's absolute path".into(),
            ));
        }
        looked.push(format!(
            "{} (the card's absolute path): no complete split",
            dir.display()
        ));
    }
    let local_dirs: Vec<(PathBuf, &str)> = match data_dir {
        DataDir::Flag(dir) => vec![(dir.clone(), "--data-dir")],
        DataDir::Env(dir) => vec![(dir.clone(), "COTEXT_DATA")],
        DataDir::None => {
            looked.push("local copies: neither --data-dir nor COTEXT_DATA given".to_string());
            Vec::new()
        }
    };
    for (dir, how) in &local_dirs {
        for source in &card.sources {
            let Location::Local { dir: sub } = &source.location else {
                continue;
            };
            if Path::new(sub).is_absolute() {
                continue;
            }
            let mut candidates = vec![dir.join(sub)];
            if !sub.is_empty() {
                candidates.push(dir.clone());
            }
            for root in candidates {
                if any_split_present(card, source, &root) {
                    return Ok(found(source, root, format!("{how} {}", dir.display())));
                }
                let files: Vec<&str> = source
                    .files
                    .iter()
                    .filter(|f| f.role.as_deref() != Some("trees"))
                    .map(|f| f.path.as_str())
                    .collect();
                looked.push(format!(
                    "{how}: {} (no complete split of {})",
                    root.display(),
                    dedup(files).join(", ")
                ));
            }
        }
    }
    if matches!(data_dir, DataDir::Flag(_)) {
        return Err(Error::DatasetNotFound {
            name: card.name.clone(),
            looked,
            hint: hint(card),
        });
    }
    for source in &card.sources {
        match &source.location {
            Location::Local { .. } => {}
            Location::Hub { repo, revision } => {
                let repo = hub_repo(repo, revision.as_deref());
                if let Some(root) = hub_cached_root(source, repo.clone()) {
                    if any_split_present(card, source, &root) {
                        return Ok(found(
                            source,
                            root,
                            format!("HF cache ({})", source.describe()),
                        ));
                    }
                }
                looked.push(format!(
                    "HF cache: {} (no files of revision {})",
                    hub_cache().path().join(repo.folder_name()).display(),
                    repo.revision()
                ));
            }
            Location::Url { .. } => {
                let root = url_cache_dir(&card.name);
                if any_split_present(card, source, &root) {
                    return Ok(found(
                        source,
                        root,
                        format!("download cache ({})", source.describe()),
                    ));
                }
                looked.push(format!("download cache: {} (empty)", root.display()));
            }
        }
    }
    Err(Error::DatasetNotFound {
        name: card.name.clone(),
        looked,
        hint: hint(card),
    })
}

fn dedup(mut items: Vec<&str>) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    items.retain(|i| seen.insert(*i));
    items
}

/// The sha256 of a file, lower-case hex.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a present dataset against its card: byte size and sha256 of every
/// present file that the card gives them for, then the example count and the
/// label counts of every present split (IMDB also with the rating scheme).
/// Returns one line per check done.
///
/// # Errors
/// [`Error::Mismatch`] for the first difference; the readers' errors for a
/// malformed file.
pub fn verify(dataset: &Dataset) -> Result<Vec<String>> {
    let mut report = Vec::new();
    let splits = dataset.splits();
    for file in &dataset.source.files {
        let path = dataset.path(file);
        if !splits.contains(&file.split) || !path.is_file() {
            continue;
        }
        if let Some(bytes) = file.bytes {
            let len = std::fs::metadata(&path)
                .map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?
                .len();
            if len != bytes {
                return Err(Error::Mismatch {
                    path,
                    what: "size in bytes".into(),
                    expected: bytes.to_string(),
                    found: len.to_string(),
                });
            }
        }
        if let Some(expected) = &file.sha256 {
            let found = sha256_file(&path)?;
            if &found != expected {
                return Err(Error::Mismatch {
                    path,
                    what: "sha256".into(),
                    expected: expected.clone(),
                    found,
                });
            }
            report.push(format!("{}: sha256 ok", file.path));
        }
    }
    for split in &splits {
        let card = dataset
            .card
            .split(split)
            .expect("present splits are card splits");
        let schemes: &[LabelScheme] = match dataset.source.format() {
            Format::ImdbTsv | Format::Aclimdb => &[LabelScheme::Binary, LabelScheme::Rating],
            _ => &[LabelScheme::Binary],
        };
        for &scheme in schemes {
            let options = LoadOptions {
                scheme,
                ..LoadOptions::default()
            };
            let data = dataset.load(split, &options)?;
            let where_ = dataset.root.join(split);
            if data.len() != card.count {
                return Err(Error::Mismatch {
                    path: where_,
                    what: format!("examples in split {split}"),
                    expected: card.count.to_string(),
                    found: data.len().to_string(),
                });
            }
            let expected = match scheme {
                LabelScheme::Rating => &card.rating_counts,
                LabelScheme::Binary => &card.label_counts,
            };
            if let SplitData::Classification(examples) = &data {
                if !expected.is_empty() {
                    let mut counts = vec![0usize; expected.len()];
                    for e in examples {
                        if let Some(c) = counts.get_mut(e.label as usize) {
                            *c += 1;
                        }
                    }
                    if &counts != expected {
                        return Err(Error::Mismatch {
                            path: where_,
                            what: format!("label counts ({scheme:?}) in split {split}"),
                            expected: format!("{expected:?}"),
                            found: format!("{counts:?}"),
                        });
                    }
                }
            }
        }
        report.push(format!("{split}: {} examples ok", card.count));
    }
    Ok(report)
}

/// Downloads dataset `card` into the HF cache (hub sources) or the download
/// cache (URL sources), using the first non-local source, then [`verify`]s it.
/// Files already cached are not downloaded again.
///
/// # Errors
/// [`Error::Download`] when the network or the server fails (offline, the
/// message says so); [`Error::Mismatch`] when a downloaded file does not match
/// the card; [`Error::Config`] for a card with no download source.
pub fn fetch(card: &DatasetCard, progress: bool) -> Result<(Dataset, Vec<String>)> {
    let source = card
        .sources
        .iter()
        .find(|s| s.kind() != SourceKind::Local)
        .ok_or_else(|| Error::Config(format!("dataset {} has no download source", card.name)))?;
    let root = match &source.location {
        Location::Hub { repo, revision } => {
            fetch_hub(source, hub_repo(repo, revision.as_deref()), progress)?
        }
        Location::Url { base_url, archive } => fetch_url(card, source, base_url, archive.as_ref())?,
        Location::Local { .. } => unreachable!("filtered above"),
    };
    let dataset = Dataset {
        card: card.clone(),
        source: source.clone(),
        root,
        origin: format!("downloaded ({})", source.describe()),
    };
    let report = verify(&dataset)?;
    Ok((dataset, report))
}

fn fetch_hub(source: &SourceCard, repo: Repo, progress: bool) -> Result<PathBuf> {
    let api = ApiBuilder::from_env()
        .with_progress(progress)
        .build()
        .map_err(|e| Error::Download(format!("cannot start the hub client: {e}")))?;
    let repo = api.repo(repo);
    let mut root = None;
    for file in &source.files {
        let path = repo.get(&file.path).map_err(|e| {
            Error::Download(format!(
                "{} from {}: {e} (is the network reachable? HF_ENDPOINT={})",
                file.path,
                source.describe(),
                std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
            ))
        })?;
        // `get` returns snapshots/<commit>/<path>; every file of one revision
        // shares the snapshot folder.
        let mut snapshot = path;
        for _ in Path::new(&file.path).components() {
            snapshot.pop();
        }
        root.get_or_insert(snapshot);
    }
    root.ok_or_else(|| {
        Error::Internal("hub source without files (the card check lets none through)".into())
    })
}

fn fetch_url(
    card: &DatasetCard,
    source: &SourceCard,
    base: &str,
    archive: Option<&FileCard>,
) -> Result<PathBuf> {
    let root = url_cache_dir(&card.name);
    std::fs::create_dir_all(&root).map_err(|e| Error::Io {
        path: root.clone(),
        source: e,
    })?;
    if let Some(archive) = archive {
        if card
            .splits
            .iter()
            .all(|s| split_present(source, &root, &s.name))
        {
            return Ok(root);
        }
        let archive_path = root.join(&archive.path);
        download(
            &format!("{base}{}", archive.path),
            &archive_path,
            archive.sha256.as_deref(),
        )?;
        let partial = root.join(".partial");
        let _ = std::fs::remove_dir_all(&partial);
        super::tar::unpack_tar_gz(&archive_path, &partial)?;
        for entry in std::fs::read_dir(&partial).map_err(|e| Error::Io {
            path: partial.clone(),
            source: e,
        })? {
            let entry = entry.map_err(|e| Error::Io {
                path: partial.clone(),
                source: e,
            })?;
            let target = root.join(entry.file_name());
            let _ = std::fs::remove_dir_all(&target);
            std::fs::rename(entry.path(), &target).map_err(|e| Error::Io {
                path: target.clone(),
                source: e,
            })?;
        }
        let _ = std::fs::remove_dir_all(&partial);
        let _ = std::fs::remove_file(&archive_path);
        return Ok(root);
    }
    for file in &source.files {
        let path = root.join(&file.path);
        if path.is_file() {
            continue;
        }
        download(
            &format!("{base}{}", file.path),
            &path,
            file.sha256.as_deref(),
        )?;
    }
    Ok(root)
}

/// Streams `url` into `dest` through a temporary file (renamed into place only
/// when complete and, if `sha256` is given, matching).
fn download(url: &str, dest: &Path, sha256: Option<&str>) -> Result<()> {
    let tmp = dest.with_extension("part");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    eprintln!("downloading {url}");
    let response = ureq::get(url)
        .call()
        .map_err(|e| Error::Download(format!("{url}: {e} (is the network reachable?)")))?;
    let mut reader = response.into_body().into_reader();
    let mut out = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::Download(format!("{url}: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io(&tmp))?;
    }
    out.sync_all().map_err(io(&tmp))?;
    drop(out);
    let found = hex(&hasher.finalize());
    if let Some(expected) = sha256 {
        if found != expected {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Mismatch {
                path: dest.to_path_buf(),
                what: format!("sha256 of {url}"),
                expected: expected.to_string(),
                found,
            });
        }
    }
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    Ok(())
}
