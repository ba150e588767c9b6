//! Seeded mutation fuzzing, on stable and without extra crates, of the files a
//! user hands cotext: a run config (TOML), a run's `state.json` and safetensors
//! weights. Each starts from a valid file and applies random byte flips,
//! deletions, insertions, splices of meaningful tokens and truncations; every
//! result must be `Ok` or a cotext error (for weights: one naming the file) and
//! never a panic, within a time bound. `COTEXT_FUZZ_CASES` sets the number of
//! cases per parser (default 1500).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use cotext::rng::SplitMix64;
use cotext::train::checkpoint::{self, BestWeights, Checkpoint};
use cotext::train::runner::RunState;
use cotext::train::RunConfig;

const CONFIG: &str = r#"[data]
dataset = "sst5"
max_len = 24
train_limit = 160

[model]
kind = "bilstm"
embed_dim = 16
hidden = 16

[tokenizer]
source = "train"
kind = "bpe"
vocab_size = 2000

[train]
objective = "hcot"
batch_size = 16
epochs = 2
eval_every = 3
hierarchy = [[0, 1], [2], [3, 4]]

[train.optimizer]
kind = "sgd"
lr = 0.1
momentum = 0.9
"#;

/// Fragments that make the mutations hit the parsers' interesting paths.
const TOKENS: &[&str] = &[
    "\"",
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    ":",
    "\n",
    "-1",
    "1e400",
    "NaN",
    "nan",
    "inf",
    "\"big\"",
    "true",
    "null",
    "[[",
    "18446744073709551616",
    "0",
    "\u{0}",
    "\u{fffd}",
    "kind",
    "model.",
    "\\u0000",
    "999999999999",
];

fn cases() -> usize {
    std::env::var("COTEXT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

fn mutate(rng: &mut SplitMix64, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() as u64 + 1) as usize;
        match rng.below(6) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 if at < bytes.len() => bytes[at] = rng.below(256) as u8,
            2 => {
                let end = (at + 1 + rng.below(16) as usize).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            3 => bytes.truncate(at),
            _ => {
                let token = TOKENS[rng.below(TOKENS.len() as u64) as usize];
                bytes.splice(at..at, token.bytes());
            }
        }
    }
    bytes
}

/// Runs `check` on `n` mutations of `seed`; fails naming the first input that
/// panicked, or if the cases take longer than `budget`.
fn fuzz(name: &str, seed: &[u8], stream: u64, budget: Duration, mut check: impl FnMut(&[u8])) {
    let mut rng = SplitMix64::stream(18, stream);
    let started = Instant::now();
    let n = cases();
    for case in 0..n {
        let input = mutate(&mut rng, seed);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            panic!(
                "{name}: case {case} panicked on input {:?}",
                String::from_utf8_lossy(&input)
            );
        }
        assert!(
            started.elapsed() < budget,
            "{name}: {case} cases took over {budget:?}"
        );
    }
}

#[test]
fn config_toml_never_panics() {
    RunConfig::from_toml(CONFIG, &[], "seed.toml").expect("the seed config is valid");
    fuzz(
        "config",
        CONFIG.as_bytes(),
        1,
        Duration::from_secs(120),
        |input| {
            let text = String::from_utf8_lossy(input);
            if let Err(e) = RunConfig::from_toml(&text, &[], "fuzz.toml") {
                assert!(e.is_user_error(), "{e}");
            }
        },
    );
    // Overrides are user input too.
    fuzz(
        "--set",
        b"train.optimizer.lr=3e-5",
        2,
        Duration::from_secs(60),
        |input| {
            let _ = RunConfig::from_toml(
                CONFIG,
                &[String::from_utf8_lossy(input).into_owned()],
                "seed.toml",
            );
        },
    );
}

fn weights(x: f32) -> HashMap<String, Tensor> {
    HashMap::from([
        (
            "embed.weight".to_string(),
            Tensor::new(&[[x, 0.5], [-1.0, 2.0]], &Device::Cpu).unwrap(),
        ),
        (
            "head.bias".to_string(),
            Tensor::new(&[0.25f32, x], &Device::Cpu).unwrap(),
        ),
        (
            "step".to_string(),
            Tensor::new(&[3u32, 0], &Device::Cpu).unwrap(),
        ),
    ])
}

#[test]
fn state_json_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path();
    let state = RunState {
        step: 7,
        cursor: Default::default(),
        rng_state: 9,
        best: Some((0.5, 6)),
        bad_evals: 1,
        finished: false,
        stopped_early: false,
    };
    checkpoint::save(
        run,
        &state,
        &weights(1.0),
        &weights(2.0),
        BestWeights::Current,
        None,
    )
    .unwrap();
    let seed = std::fs::read(run.join("state.json")).unwrap();
    fuzz("state.json", &seed, 3, Duration::from_secs(120), |input| {
        std::fs::write(run.join("state.json"), input).unwrap();
        match Checkpoint::read(run) {
            Ok(Some(c)) => {
                for name in [checkpoint::MODEL, checkpoint::OPTIM, checkpoint::BEST] {
                    let _ = c.verify(name);
                }
                let _ = c.inference_weights();
            }
            Ok(None) => unreachable!("the file exists"),
            Err(e) => assert!(e.is_user_error(), "{e}"),
        }
    });
}

#[test]
fn safetensors_loading_never_panics_and_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("weights.safetensors");
    checkpoint::save_tensors(&path, &weights(1.5)).unwrap();
    let seed = std::fs::read(&path).unwrap();
    let check = |input: &[u8], path: &Path| {
        std::fs::write(path, input).unwrap();
        if let Err(e) = checkpoint::load_tensors(path) {
            assert!(
                e.is_user_error() && e.to_string().contains("weights.safetensors"),
                "{e}"
            );
        }
    };
    fuzz("safetensors", &seed, 4, Duration::from_secs(120), |input| {
        check(input, &path)
    });
    // Mutations of the data bytes only (the header kept valid), where NaN
    // exponents come from.
    let header = 8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let mut rng = SplitMix64::stream(18, 5);
    for _ in 0..cases() {
        let mut bytes = seed.clone();
        let at = header + rng.below((bytes.len() - header) as u64) as usize;
        bytes[at] = rng.below(256) as u8;
        check(&bytes, &path);
    }
}

#[test]
fn tokenizer_json_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json");
    let seed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hf-bert/tokenizer.json"
    ))
    .unwrap();
    fuzz(
        "tokenizer.json",
        &seed,
        6,
        Duration::from_secs(120),
        |input| {
            std::fs::write(&path, input).unwrap();
            match cotext::tokenize::TextTokenizer::from_file(&path) {
                Ok(t) => {
                    let _ = t.encode_with("a fine film .", &Default::default());
                }
                Err(e) => assert!(
                    e.is_user_error() && e.to_string().contains("tokenizer.json"),
                    "{e}"
                ),
            }
        },
    );
}

/// Writes `input` to a file named `name` in a fresh temporary folder and runs
/// `read` on it; a reader must return `Ok` or a user error naming the file.
fn on_file<T>(name: &str, input: &[u8], read: impl FnOnce(&Path) -> cotext::Result<T>) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(name);
    std::fs::write(&path, input).unwrap();
    if let Err(e) = read(&path) {
        assert!(e.is_user_error(), "{name}: {e}");
        assert!(
            e.to_string().contains(name),
            "{name}: the error does not name the file: {e}"
        );
    }
}

#[test]
fn data_files_never_panic_and_name_the_file() {
    use cotext::data::file::{self, FileColumns};
    let labels: Vec<String> = ["neg", "pos"].iter().map(|s| s.to_string()).collect();
    let seeds: [(&str, &str); 3] = [
        ("d.tsv", "id\tsentence\tlabel\n1\ta fine , witty film\tpos\n2\tdull and long\tneg\n3\tgreat\t1\n"),
        ("d.csv", "\u{feff}id,review,label\r\n1,\"a fine, \"\"witty\"\" film\",pos\r\n2,dull,neg\r\n"),
        ("d.jsonl", "{\"idx\": 1, \"text\": \"a fine film\", \"label\": \"pos\"}\n{\"text\": \"dull\", \"label\": 0}\n"),
    ];
    for (stream, (name, seed)) in seeds.iter().enumerate() {
        // The seeds are valid: the mutations start from files that read.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(name), seed).unwrap();
        let read =
            file::read_labelled_file(&tmp.path().join(name), &FileColumns::default(), &labels);
        assert_eq!(
            read.unwrap_or_else(|e| panic!("seed {name}: {e}"))
                .examples
                .len(),
            seed.lines().count() - usize::from(!name.ends_with("jsonl"))
        );
        fuzz(
            name,
            seed.as_bytes(),
            10 + stream as u64,
            Duration::from_secs(120),
            |input| {
                on_file(name, input, |p| {
                    file::read_labelled_file(p, &FileColumns::default(), &labels)
                });
                on_file(name, input, |p| {
                    file::read_texts(p, &FileColumns::default())
                });
                on_file(name, input, |p| {
                    file::open(
                        &[("train".into(), p.to_path_buf())],
                        &FileColumns::default(),
                        None,
                    )
                });
            },
        );
    }
}

#[test]
fn sst_trees_never_panic_and_name_the_file() {
    let seed = "(3 (2 (2 The) (2 film)) (4 (3 (2 is) (4 (4 witty) (2 ,) (3 fine))) (2 .)))\n\
                (1 (2 It) (1 (1 drags) (2 .)))\n";
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("trees.txt"), seed).unwrap();
    assert_eq!(
        cotext::data::sst::read_sst_trees(&tmp.path().join("trees.txt"))
            .expect("the seed trees are valid")
            .len(),
        2
    );
    fuzz(
        "trees.txt",
        seed.as_bytes(),
        20,
        Duration::from_secs(120),
        |input| {
            on_file("trees.txt", input, cotext::data::sst::read_sst_trees);
        },
    );
}
