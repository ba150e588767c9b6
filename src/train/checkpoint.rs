//! Checkpoints of a run, written and read as one unit.
//!
//! A run directory holds at most one live checkpoint:
//!
//! ```text
//! state.json              the pointer: the RunState, the checkpoint folder's name
//!                         and the sha256 of every file in it
//! ckpt-00000120/          model.safetensors, optim.safetensors and, once there
//!                         was a dev evaluation, best.safetensors
//! ```
//!
//! [`save`] writes the tensors into a fresh temporary folder, fsyncs them, renames
//! the folder to `ckpt-<step>`, then replaces `state.json` atomically: that rename
//! is the one switch from the old checkpoint to the new one. The old folder is
//! deleted only after it. A kill at any point therefore leaves `state.json`
//! pointing at a complete checkpoint whose files it has checksums for, and
//! [`Checkpoint::verify`] refuses a file that does not match them.
//!
//! Runs written before this layout (weights, optimizer state and best weights
//! beside `state.json`, no checksums) are still read, unverified; their next
//! save moves them to the new layout.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::runner::RunState;
use crate::error::{Error, Result};

pub use crate::fsio::atomic_write;

/// The last weights.
pub const MODEL: &str = "model.safetensors";
/// Both optimizers' state.
pub const OPTIM: &str = "optim.safetensors";
/// The weights of the best dev evaluation.
pub const BEST: &str = "best.safetensors";
/// The pointer file: run state plus which checkpoint folder is live.
pub const STATE: &str = "state.json";

const DIR_PREFIX: &str = "ckpt-";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which folder `state.json` points at and what its files must hash to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// The folder's name inside the run directory (`ckpt-00000120`).
    pub dir: String,
    /// sha256 (lowercase hex) of each file in it, by file name.
    pub files: BTreeMap<String, String>,
}

/// `state.json` as written: the run state with the checkpoint reference beside it
/// (flattened, so readers that only want the [`RunState`] read it as one).
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    #[serde(flatten)]
    state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoint: Option<CheckpointRef>,
}

/// A run's live checkpoint, as `state.json` describes it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The run state saved with it.
    pub state: RunState,
    /// The folder holding its files (the run directory itself for an old run).
    pub dir: PathBuf,
    /// The reference written in `state.json` (`None` for an old-layout run).
    pub reference: Option<CheckpointRef>,
}

impl Checkpoint {
    /// Reads `run/state.json`; `Ok(None)` when there is none. A `state.json` that
    /// does not parse, or that points at a folder that does not belong to its step,
    /// is an error naming it.
    pub fn read(run: &Path) -> Result<Option<Checkpoint>> {
        let path = run.join(STATE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io { path, source: e }),
        };
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| Error::Parse {
            path: path.clone(),
            line: e.line(),
            msg: e.to_string(),
        })?;
        let dir = match &file.checkpoint {
            Some(r) => {
                if r.dir != dir_name(file.state.step) {
                    return Err(Error::InvalidFile {
                        path,
                        msg: format!("step {} points at checkpoint folder {:?}, which belongs to another step", file.state.step, r.dir),
                    });
                }
                run.join(&r.dir)
            }
            None => run.to_path_buf(),
        };
        Ok(Some(Checkpoint {
            state: file.state,
            dir,
            reference: file.checkpoint,
        }))
    }

    /// Whether the checkpoint holds `name` (for an old run: whether the file exists).
    pub fn has(&self, name: &str) -> bool {
        match &self.reference {
            Some(r) => r.files.contains_key(name),
            None => self.dir.join(name).is_file(),
        }
    }

    /// The path of `name` after checking that it exists and that its sha256 is the
    /// one `state.json` records. A mismatch means the checkpoint was torn or changed
    /// since it was written; it is refused rather than resumed from.
    pub fn verify(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        let Some(r) = &self.reference else {
            // An old-layout run has no checksums to check against.
            return if path.is_file() {
                Ok(path)
            } else {
                Err(Error::Checkpoint {
                    path,
                    msg: "missing from the checkpoint".into(),
                })
            };
        };
        let expected = r.files.get(name).ok_or_else(|| Error::Checkpoint {
            path: path.clone(),
            msg: "not part of the checkpoint state.json describes".into(),
        })?;
        if !path.is_file() {
            return Err(Error::Checkpoint {
                path,
                msg: "missing: state.json lists it but the file is gone, so the checkpoint cannot be used".into(),
            });
        }
        let found = sha256_file(&path)?;
        if &found != expected {
            return Err(Error::Checkpoint {
                path,
                msg: format!(
                    "sha256 {found} differs from the {expected} state.json records: the file was damaged or replaced \
                     after it was saved, so the checkpoint is refused"
                ),
            });
        }
        Ok(path)
    }

    /// The weights to evaluate or predict with: the best ones when there were dev
    /// evaluations, else the last ones; verified.
    pub fn inference_weights(&self) -> Result<PathBuf> {
        self.verify(if self.has(BEST) { BEST } else { MODEL })
    }
}

/// What the checkpoint's `best.safetensors` holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BestWeights {
    /// No dev evaluation yet: no best weights.
    None,
    /// This step's weights are the best: `best.safetensors` is `model.safetensors`.
    Current,
    /// The previous checkpoint's best weights still are.
    Previous,
}

/// The checkpoint folder's name for `step`.
fn dir_name(step: u64) -> String {
    format!("{DIR_PREFIX}{step:08}")
}

/// Saves a checkpoint of `state` (model weights, optimizer state, best weights as
/// `best` says) into `run` as one unit and returns it; `previous` is the live one
/// it replaces, if any. See the module documentation for the protocol.
pub fn save(
    run: &Path,
    state: &RunState,
    model: &HashMap<String, Tensor>,
    optim: &HashMap<String, Tensor>,
    best: BestWeights,
    previous: Option<&Checkpoint>,
) -> Result<Checkpoint> {
    let name = dir_name(state.step);
    // A second save at the same step (an evaluation's, then Ctrl-C's or the final
    // one) has the same tensors and the same best weights: only the state changes.
    if let Some(prev) = previous.filter(|p| p.reference.as_ref().is_some_and(|r| r.dir == name)) {
        let reference = prev.reference.clone();
        write_state(run, state, reference.clone())?;
        return Ok(Checkpoint {
            state: state.clone(),
            dir: prev.dir.clone(),
            reference,
        });
    }
    let tmp = run.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let mut files = BTreeMap::new();
    files.insert(MODEL.to_string(), write_tensors(&tmp.join(MODEL), model)?);
    files.insert(OPTIM.to_string(), write_tensors(&tmp.join(OPTIM), optim)?);
    match best {
        BestWeights::None => {}
        BestWeights::Current => {
            link_or_copy(&tmp.join(MODEL), &tmp.join(BEST))?;
            files.insert(BEST.to_string(), files[MODEL].clone());
        }
        BestWeights::Previous => {
            if let Some(prev) = previous.filter(|p| p.has(BEST)) {
                let src = prev.dir.join(BEST);
                link_or_copy(&src, &tmp.join(BEST))?;
                let sum = match prev.reference.as_ref().and_then(|r| r.files.get(BEST)) {
                    Some(s) => s.clone(),
                    None => sha256_file(&src)?,
                };
                files.insert(BEST.to_string(), sum);
            }
        }
    }
    sync_dir(&tmp);
    let dir = run.join(&name);
    if dir.exists() {
        // Left by a save that was killed before its state.json switch: never live.
        fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    fs::rename(&tmp, &dir).map_err(io(&dir))?;
    sync_dir(run);
    let reference = Some(CheckpointRef { dir: name, files });
    write_state(run, state, reference.clone())?;
    remove_stale(run, previous.is_some_and(|p| p.reference.is_none()));
    Ok(Checkpoint {
        state: state.clone(),
        dir,
        reference,
    })
}

fn write_state(run: &Path, state: &RunState, checkpoint: Option<CheckpointRef>) -> Result<()> {
    let file = StateFile {
        state: state.clone(),
        checkpoint,
    };
    let json = serde_json::to_vec_pretty(&file).expect("state serializes");
    atomic_write(&run.join(STATE), &json)
}

/// Deletes every checkpoint folder `state.json` no longer points at, and the
/// temporary ones of killed saves; with `legacy`, the old layout's loose files.
/// Failures are ignored: a leftover folder is never read.
pub fn remove_stale(run: &Path, legacy: bool) {
    let live = Checkpoint::read(run)
        .ok()
        .flatten()
        .and_then(|c| c.reference)
        .map(|r| r.dir);
    let Ok(entries) = fs::read_dir(run) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = (name.starts_with(DIR_PREFIX) || name.starts_with(&format!(".{DIR_PREFIX}")))
            && entry.path().is_dir();
        if ours && Some(&name) != live.as_ref() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    if legacy && live.is_some() {
        for name in [MODEL, OPTIM, BEST] {
            let _ = fs::remove_file(run.join(name));
        }
    }
}

/// Writes a safetensors file, fsyncs it and returns its sha256.
fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<String> {
    candle_core::safetensors::save(tensors, path).map_err(|e| match e {
        candle_core::Error::Io(source) => Error::Io {
            path: path.to_path_buf(),
            source,
        },
        e => Error::Candle(e),
    })?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))?;
    sha256_file(path)
}

/// A hard link (the best weights are the same bytes as a model file), or a copy
/// where the file system has none.
fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if fs::hard_link(src, dst).is_err() {
        fs::copy(src, dst).map_err(io(dst))?;
        File::open(dst)
            .and_then(|f| f.sync_all())
            .map_err(io(dst))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Persists the folder's entries; not every platform lets a folder be opened.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

pub use crate::fsio::save_tensors;

/// Loads a safetensors file onto the CPU; a missing, corrupt or non-finite file
/// is an error that names it.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = fs::read(path).map_err(io(path))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)
        .map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!("not a readable safetensors file: {e}"),
        })?;
    check_finite(path, &tensors)?;
    Ok(tensors)
}

/// Refuses tensors holding NaN or ±inf, naming `path` (the file they came from)
/// and the first such tensor: such weights would score or predict nonsense.
pub fn check_finite(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        if !matches!(
            t.dtype(),
            DType::F32 | DType::F64 | DType::F16 | DType::BF16
        ) {
            continue;
        }
        let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!("tensor {name} holds {bad}: the weights are damaged"),
            });
        }
    }
    Ok(())
}

/// Loads the weights a run evaluates or predicts with (the best ones, else the
/// last) into `model`, after verifying them against `state.json`; returns their
/// path. Weights that are torn, damaged or not finite are refused, naming the file.
pub fn load_inference_weights(run: &Path, model: &dyn crate::models::Trainable) -> Result<PathBuf> {
    let path = match Checkpoint::read(run)? {
        Some(c) => c.inference_weights()?,
        None => {
            return Err(Error::Run {
                path: run.to_path_buf(),
                msg: format!("no checkpoint ({STATE}): not a trained cotext run"),
            });
        }
    };
    load_weights_checked(&path, model)?;
    Ok(path)
}

/// Loads `path` into `model`: a file that is not valid safetensors or holds
/// non-finite values is an error naming it.
pub fn load_weights_checked(path: &Path, model: &dyn crate::models::Trainable) -> Result<()> {
    // Parse once here so a damaged file is reported with its name, whatever the
    // model's own loader would say.
    load_tensors(path)?;
    model.load_weights(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::BatchCursor;
    use candle_core::Device;

    fn state(step: u64) -> RunState {
        RunState {
            step,
            cursor: BatchCursor::default(),
            rng_state: 7,
            best: None,
            bad_evals: 0,
            finished: false,
            stopped_early: false,
        }
    }

    fn tensors(x: f32) -> HashMap<String, Tensor> {
        HashMap::from([(
            "w".to_string(),
            Tensor::new(&[x, 2.5, -3.0], &Device::Cpu).unwrap(),
        )])
    }

    #[test]
    fn tensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        save_tensors(&p, &tensors(1.0)).unwrap();
        let back = load_tensors(&p).unwrap();
        assert_eq!(back["w"].to_vec1::<f32>().unwrap(), vec![1.0, 2.5, -3.0]);
        std::fs::write(&p, b"garbage").unwrap();
        let err = load_tensors(&p).unwrap_err();
        assert!(
            err.is_user_error() && err.to_string().contains("model.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn non_finite_weights_are_refused_naming_the_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        save_tensors(&p, &tensors(f32::NAN)).unwrap();
        let err = load_tensors(&p).unwrap_err().to_string();
        assert!(
            err.contains("w.safetensors") && err.contains("tensor w") && err.contains("NaN"),
            "{err}"
        );
    }

    #[test]
    fn a_save_switches_the_whole_checkpoint_and_removes_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let first = save(
            run,
            &state(1),
            &tensors(1.0),
            &tensors(10.0),
            BestWeights::Current,
            None,
        )
        .unwrap();
        assert!(run.join("ckpt-00000001").join(BEST).is_file());
        let second = save(
            run,
            &state(2),
            &tensors(2.0),
            &tensors(20.0),
            BestWeights::Previous,
            Some(&first),
        )
        .unwrap();
        assert!(
            !run.join("ckpt-00000001").exists(),
            "the old checkpoint is removed after the switch"
        );
        let read = Checkpoint::read(run).unwrap().unwrap();
        assert_eq!(read.state.step, 2);
        assert_eq!(read.dir, second.dir);
        let weights = load_tensors(&read.verify(MODEL).unwrap()).unwrap();
        assert_eq!(weights["w"].to_vec1::<f32>().unwrap()[0], 2.0);
        // The best weights are still step 1's.
        let best = load_tensors(&read.inference_weights().unwrap()).unwrap();
        assert_eq!(best["w"].to_vec1::<f32>().unwrap()[0], 1.0);
        // A same-step save keeps the folder and rewrites the state only.
        let mut finished = state(2);
        finished.finished = true;
        let third = save(
            run,
            &finished,
            &tensors(2.0),
            &tensors(20.0),
            BestWeights::Previous,
            Some(&second),
        )
        .unwrap();
        assert_eq!(third.dir, second.dir);
        assert!(Checkpoint::read(run).unwrap().unwrap().state.finished);
        // state.json stays readable as a plain RunState.
        let plain: RunState =
            serde_json::from_slice(&std::fs::read(run.join(STATE)).unwrap()).unwrap();
        assert_eq!(plain.step, 2);
    }

    #[test]
    fn a_killed_save_leaves_the_previous_checkpoint_live() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let first = save(
            run,
            &state(1),
            &tensors(1.0),
            &tensors(10.0),
            BestWeights::None,
            None,
        )
        .unwrap();
        // A save killed after writing its folder but before the state.json switch.
        let second = run.join("ckpt-00000002");
        std::fs::create_dir(&second).unwrap();
        std::fs::write(second.join(MODEL), b"half").unwrap();
        std::fs::create_dir(run.join(".ckpt-00000003.tmp-1")).unwrap();
        let read = Checkpoint::read(run).unwrap().unwrap();
        assert_eq!(read.state.step, 1);
        read.verify(MODEL).unwrap();
        read.verify(OPTIM).unwrap();
        save(
            run,
            &state(2),
            &tensors(2.0),
            &tensors(20.0),
            BestWeights::None,
            Some(&first),
        )
        .unwrap();
        let names: Vec<String> = std::fs::read_dir(run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let read = Checkpoint::read(run).unwrap().unwrap();
        assert_eq!(
            load_tensors(&read.verify(MODEL).unwrap()).unwrap()["w"]
                .to_vec1::<f32>()
                .unwrap()[0],
            2.0
        );
    }

    #[test]
    fn a_changed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let c = save(
            run,
            &state(3),
            &tensors(1.0),
            &tensors(10.0),
            BestWeights::None,
            None,
        )
        .unwrap();
        let opt = c.dir.join(OPTIM);
        let mut bytes = std::fs::read(&opt).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&opt, bytes).unwrap();
        let err = Checkpoint::read(run)
            .unwrap()
            .unwrap()
            .verify(OPTIM)
            .unwrap_err();
        assert!(err.is_user_error());
        let msg = err.to_string();
        assert!(
            msg.contains("optim.safetensors") && msg.contains("sha256"),
            "{msg}"
        );
        std::fs::remove_file(c.dir.join(MODEL)).unwrap();
        assert!(Checkpoint::read(run)
            .unwrap()
            .unwrap()
            .verify(MODEL)
            .unwrap_err()
            .to_string()
            .contains("missing"));
        // A state.json whose folder is another step's is refused.
        let text = std::fs::read_to_string(run.join(STATE))
            .unwrap()
            .replace("ckpt-00000003", "ckpt-00000002");
        std::fs::write(run.join(STATE), text).unwrap();
        assert!(Checkpoint::read(run)
            .unwrap_err()
            .to_string()
            .contains("another step"));
    }

    #[test]
    fn old_layout_runs_are_read_and_moved_to_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        save_tensors(&run.join(MODEL), &tensors(1.0)).unwrap();
        save_tensors(&run.join(OPTIM), &tensors(10.0)).unwrap();
        save_tensors(&run.join(BEST), &tensors(0.5)).unwrap();
        std::fs::write(run.join(STATE), serde_json::to_vec(&state(4)).unwrap()).unwrap();
        let old = Checkpoint::read(run).unwrap().unwrap();
        assert!(old.reference.is_none());
        assert_eq!(old.inference_weights().unwrap(), run.join(BEST));
        save(
            run,
            &state(5),
            &tensors(2.0),
            &tensors(20.0),
            BestWeights::Previous,
            Some(&old),
        )
        .unwrap();
        assert!(!run.join(MODEL).exists() && !run.join(BEST).exists());
        let new = Checkpoint::read(run).unwrap().unwrap();
        assert_eq!(
            load_tensors(&new.inference_weights().unwrap()).unwrap()["w"]
                .to_vec1::<f32>()
                .unwrap()[0],
            0.5
        );
    }
}
