//! Pretrained-model lookup: a local folder, and the Python huggingface_hub cache
//! layout found offline (its own process: it sets HF_HOME).

use std::path::Path;

use cotext::data::pretrained::{resolve_model_dir, MODEL_FILES};

#[test]
fn finds_a_local_folder_and_the_hf_cache_layout_offline() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(resolve_model_dir(tmp.path()).unwrap(), tmp.path());
    // The Python huggingface_hub layout: refs/main names the snapshot.
    let home = tmp.path().join("hf");
    let repo = home.join("hub").join("models--acme--tiny-bert");
    let snap = repo.join("snapshots").join("0123abc");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abc").unwrap();
    for f in MODEL_FILES {
        std::fs::write(snap.join(f), "{}").unwrap();
    }
    // HF_HOME is read by hf-hub's Cache::from_env; no other test sets it.
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    assert_eq!(
        resolve_model_dir(Path::new("acme/tiny-bert")).unwrap(),
        snap
    );
    let err = resolve_model_dir(Path::new("acme/missing"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("acme/missing") && err.contains("HF cache"),
        "{err}"
    );
    assert!(resolve_model_dir(Path::new("./nope")).is_err());
}
