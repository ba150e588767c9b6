//! The real `cotext` binary, run in a temp dir: `data list|info|fetch` and
//! `tokenizer train|encode|decode|roundtrip`, exit codes included.

mod common;

fn shared() -> Option<PathBuf> {
    common::shared_data_with("README.md")
}

/// `cotext args` in `cwd` with the hub cache in `home`, blind to `COTEXT_DATA`.
fn cotext(cwd: &Path, home: &Path, args: &[&str]) -> Output {
    let mut cmd = common::command(cwd, args);
    cmd.env_remove("COTEXT_DATA").env("HF_HOME", home);
    common::run(cmd, None)
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn assert_exit_2(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    stderr(out)
}

/// The row of `split` in an info table, whitespace-normalized.
fn row(text: &str, split: &str) -> String {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(split))
        .unwrap_or_else(|| panic!("no row {split} in\n{text}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn info_prints_readme_counts_for_every_dataset() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = data.to_str().unwrap();
    let run = |args: &[&str]| assert_ok(&cotext(tmp.path(), tmp.path(), args));

    let out = run(&["data", "info", "sst2", "--data-dir", dir]);
    assert!(
        row(&out, "train").starts_with("train 6920 6920 ok 3310 (47.8%) 3610 (52.2%)"),
        "{out}"
    );
    assert!(row(&out, "dev").starts_with("dev 872 872 ok 428"), "{out}");
    assert!(
        row(&out, "test").starts_with("test 1821 1821 ok 912"),
        "{out}"
    );

    let out = run(&["data", "info", "sst5", "--data-dir", dir]);
    assert!(
        row(&out, "train").starts_with(
            "train 8544 8544 ok 1092 (12.8%) 2218 (26.0%) 1624 (19.0%) 2322 (27.2%) 1288 (15.1%)"
        ),
        "{out}"
    );
    assert!(row(&out, "dev").starts_with("dev 1101 1101 ok"), "{out}");
    assert!(row(&out, "test").starts_with("test 2210 2210 ok"), "{out}");

    let out = run(&["data", "info", "imdb", "--data-dir", dir]);
    assert!(
        row(&out, "train").starts_with("train 25000 25000 ok 12500 (50.0%) 12500 (50.0%)"),
        "{out}"
    );
    let out = run(&[
        "data",
        "info",
        "imdb",
        "--labels",
        "rating",
        "--data-dir",
        dir,
    ]);
    assert!(
        row(&out, "split").starts_with("split examples card 1 2 3 4 7 8 9 10"),
        "{out}"
    );
    assert!(
        row(&out, "train").starts_with("train 25000 25000 ok 5100 (20.4%) 2284 (9.1%) 2420 (9.7%) 2696 (10.8%) 2496 (10.0%) 3009 (12.0%) 2263 (9.1%) 4732 (18.9%)"),
        "{out}"
    );
    assert!(
        row(&out, "test").starts_with("test 25000 25000 ok 5022 (20.1%)"),
        "{out}"
    );

    let out = run(&["data", "info", "multi30k-en-de", "--data-dir", dir]);
    for (split, n) in [("train", 29000), ("val", 1014), ("test", 1000)] {
        assert!(
            row(&out, split).starts_with(&format!("{split} {n} {n} ok")),
            "{out}"
        );
    }
    let out = run(&["data", "info", "iwslt15-en-vi", "--data-dir", dir]);
    assert!(
        row(&out, "tst2012").starts_with("tst2012 1553 1553 ok"),
        "{out}"
    );
    assert!(
        row(&out, "tst2013").starts_with("tst2013 1268 1268 ok"),
        "{out}"
    );
    assert_eq!(row(&out, "train"), "train missing 133317");

    let out = run(&["data", "fetch", "sst5", "--data-dir", dir]);
    assert!(
        out.contains("trees/train.txt: sha256 ok") && out.contains("test: 2210 examples ok"),
        "{out}"
    );
}

#[test]
fn bad_label_exits_2_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = fixtures().join("bad-sst");
    let card = bad.join("card.toml");
    let out = cotext(
        tmp.path(),
        tmp.path(),
        &[
            "data",
            "info",
            card.to_str().unwrap(),
            "--data-dir",
            bad.to_str().unwrap(),
        ],
    );
    let err = assert_exit_2(&out);
    let file = bad.join("bad-sst/train.tsv");
    assert_eq!(
        err.trim(),
        format!(
            "error: {}:3: bad label \"7\": expected an integer 0-4",
            file.display()
        )
    );
}

#[test]
fn fixture_dataset_with_trees_and_phrases() {
    let tmp = tempfile::tempdir().unwrap();
    let card = fixtures().join("tiny-sst/card.toml");
    let (card, dir) = (card.to_str().unwrap(), fixtures());
    let dir = dir.to_str().unwrap();
    for extra in [&[][..], &["--trees"][..]] {
        let mut args = vec!["data", "info", card, "--data-dir", dir];
        args.extend_from_slice(extra);
        let out = assert_ok(&cotext(tmp.path(), tmp.path(), &args));
        assert!(
            row(&out, "train")
                .starts_with("train 4 4 ok 1 (25.0%) 0 (0.0%) 1 (25.0%) 1 (25.0%) 1 (25.0%)"),
            "{out}"
        );
        assert!(
            row(&out, "dev").starts_with("dev 2 2 ok 0 (0.0%) 1 (50.0%)"),
            "{out}"
        );
    }
    // Phrase level: the distinct phrases of the four train trees.
    let out = assert_ok(&cotext(
        tmp.path(),
        tmp.path(),
        &["data", "info", card, "--data-dir", dir, "--phrases"],
    ));
    assert!(row(&out, "train").starts_with("train 33 phrases"), "{out}");
}

#[test]
fn missing_dataset_offline_says_where_it_looked_and_how_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cotext(tmp.path(), tmp.path(), &["data", "info", "sst2"]);
    let err = assert_exit_2(&out);
    assert!(
        err.contains("dataset `sst2` not found; looked in:"),
        "{err}"
    );
    assert!(
        err.contains("neither --data-dir nor COTEXT_DATA given"),
        "{err}"
    );
    let hub = tmp.path().join("hub/datasets--SetFit--sst2");
    assert!(
        err.contains(&format!(
            "HF cache: {} (no files of revision 00ea8ccb7a54b4e3780a3e51aa3f80361ff849c0)",
            hub.display()
        )),
        "{err}"
    );
    assert!(err.contains("cotext data fetch sst2"), "{err}");
    assert!(err.contains("--data-dir DIR"), "{err}");

    let out = cotext(
        tmp.path(),
        tmp.path(),
        &[
            "data",
            "info",
            "sst2",
            "--data-dir",
            tmp.path().to_str().unwrap(),
        ],
    );
    let err = assert_exit_2(&out);
    assert!(
        err.contains(&format!(
            "--data-dir: {} (no complete split of train.tsv, dev.tsv, test.tsv)",
            tmp.path().join("sst2").display()
        )),
        "{err}"
    );

    // Offline fetch fails with a download error (exit 1), not a hang or a panic.
    let out = cotext(tmp.path(), tmp.path(), &["data", "fetch", "sst2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("download failed: train.jsonl from hub dataset SetFit/sst2"),
        "{}",
        stderr(&out)
    );

    let out = cotext(tmp.path(), tmp.path(), &["data", "info", "sst3"]);
    assert!(assert_exit_2(&out).contains("unknown dataset \"sst3\""));
}

/// Lays out files as Python huggingface_hub does: refs/REVISION holds the
/// commit, snapshots/COMMIT/PATH the files.
fn fake_hub_cache(home: &Path, repo: &str, revision: &str, files: &[(&str, String)]) {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let root = home
        .join("hub")
        .join(format!("datasets--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs").join(revision), commit).unwrap();
    let snapshot = root.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    for (name, content) in files {
        std::fs::write(snapshot.join(name), content).unwrap();
    }
}

fn jsonl(rows: &[(&str, u32)]) -> String {
    rows.iter()
        .map(|(t, l)| format!("{}\n", serde_json::json!({"text": t, "label": l})))
        .collect()
}

#[test]
fn hf_cache_hit_needs_no_network() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    fake_hub_cache(
        &home,
        "cotext-tests/tiny-sst",
        "main",
        &[
            (
                "train.jsonl",
                jsonl(&[("a", 0), ("b", 2), ("c", 3), ("d", 4)]),
            ),
            ("dev.jsonl", jsonl(&[("e", 1), ("f", 4)])),
            ("test.jsonl", jsonl(&[("g", 3)])),
        ],
    );
    let card = fixtures().join("tiny-sst/card.toml");
    let card = card.to_str().unwrap();
    let out = assert_ok(&cotext(tmp.path(), &home, &["data", "info", card]));
    assert!(
        out.contains("HF cache (hub dataset cotext-tests/tiny-sst@main)"),
        "{out}"
    );
    assert!(row(&out, "train").starts_with("train 4 4 ok"), "{out}");
    // fetch goes through hf-hub's Api (HF_ENDPOINT unreachable): a cache hit.
    let out = assert_ok(&cotext(tmp.path(), &home, &["data", "fetch", card]));
    assert!(out.contains("train: 4 examples ok"), "{out}");

    // A cached file whose sha256 differs from the card is rejected (exit 2).
    fake_hub_cache(
        &home,
        "SetFit/sst5",
        "e51bdcd8cd3a30da231967c1a249ba59361279a3",
        &[
            ("train.jsonl", jsonl(&[("x", 1)])),
            ("dev.jsonl", jsonl(&[("y", 1)])),
            ("test.jsonl", jsonl(&[("z", 1)])),
        ],
    );
    let err = assert_exit_2(&cotext(tmp.path(), &home, &["data", "fetch", "sst5"]));
    assert!(
        err.contains("train.jsonl: size in bytes: expected 1323698, found"),
        "{err}"
    );
}

#[test]
fn url_download_cache_is_used_offline() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cotext/iwslt15-en-vi");
    std::fs::create_dir_all(&cache).unwrap();
    for name in ["tst2012.en", "tst2012.vi", "tst2013.en", "tst2013.vi"] {
        std::fs::copy(data.join("iwslt15-en-vi").join(name), cache.join(name)).unwrap();
    }
    let out = assert_ok(&cotext(
        tmp.path(),
        tmp.path(),
        &["data", "info", "iwslt15-en-vi"],
    ));
    assert!(out.contains("download cache"), "{out}");
    assert!(
        row(&out, "tst2013").starts_with("tst2013 1268 1268 ok"),
        "{out}"
    );
}

#[test]
fn unequal_parallel_files_exit_2_with_both_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("par");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixtures().join("tiny-parallel/train.en"),
        dir.join("train.en"),
    )
    .unwrap();
    std::fs::write(dir.join("train.de"), "Ein Hund.\nZwei Kinder.\n").unwrap();
    let card = tmp.path().join("par.toml");
    std::fs::write(
        &card,
        r#"name = "par"
title = "parallel fixture"
task = "translation"
languages = ["en", "de"]
license = "test"
citation = "none"
splits = [{ name = "train", count = 3 }]
[[sources]]
kind = "local"
dir = "par"
format = "parallel"
files = [{ split = "train", path = "train.en", role = "en" }, { split = "train", path = "train.de", role = "de" }]
[[sources]]
kind = "url"
base_url = "http://127.0.0.1:9/"
format = "parallel"
files = [{ split = "train", path = "train.en", role = "en" }, { split = "train", path = "train.de", role = "de" }]
"#,
    )
    .unwrap();
    let args = [
        "data",
        "info",
        card.to_str().unwrap(),
        "--data-dir",
        tmp.path().to_str().unwrap(),
    ];
    let err = assert_exit_2(&cotext(tmp.path(), tmp.path(), &args));
    assert!(
        err.contains(&format!(
            "line counts differ: {} has 3 lines but {} has 2",
            dir.join("train.en").display(),
            dir.join("train.de").display()
        )),
        "{err}"
    );
}

#[test]
fn tokenizer_train_encode_decode_round_trip_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let text = fixtures().join("tiny-parallel/train.en");
    let tok = tmp.path().join("tok.json");
    let (text, tok_s) = (text.to_str().unwrap(), tok.to_str().unwrap());
    for kind in ["bpe", "unigram"] {
        let out = assert_ok(&cotext(
            tmp.path(),
            tmp.path(),
            &[
                "tokenizer",
                "train",
                "--text",
                text,
                "--kind",
                kind,
                "--vocab-size",
                "300",
                "--min-frequency",
                "1",
                "--out",
                tok_s,
            ],
        ));
        assert!(
            out.starts_with(&format!("trained {kind} tokenizer on 3 texts of")),
            "{out}"
        );
        let out = assert_ok(&cotext(
            tmp.path(),
            tmp.path(),
            &[
                "tokenizer",
                "roundtrip",
                "--tokenizer",
                tok_s,
                "--text",
                text,
            ],
        ));
        assert!(out.starts_with("3/3 texts of"), "{kind}: {out}");
    }
    let out = assert_ok(&cotext(
        tmp.path(),
        tmp.path(),
        &[
            "tokenizer",
            "encode",
            "--tokenizer",
            tok_s,
            "--specials",
            "A dog runs.",
        ],
    ));
    let ids: Vec<&str> = out.lines().next().unwrap().split(' ').collect();
    assert_eq!((ids[0], *ids.last().unwrap()), ("1", "2"), "{out}");
    let mut args = vec!["tokenizer", "decode", "--tokenizer", tok_s];
    args.extend(ids.iter().copied());
    assert_eq!(
        assert_ok(&cotext(tmp.path(), tmp.path(), &args)),
        "A dog runs.\n"
    );
    let err = assert_exit_2(&cotext(
        tmp.path(),
        tmp.path(),
        &["tokenizer", "decode", "--tokenizer", tok_s, "1", "99999"],
    ));
    assert!(
        err.contains("token id 99999 (position 2) is not in the vocabulary"),
        "{err}"
    );

    // A file that is not a tokenizer is bad input: exit 2, naming it.
    let not_tok = fixtures().join("tiny-sst/card.toml");
    let err = assert_exit_2(&cotext(
        tmp.path(),
        tmp.path(),
        &[
            "tokenizer",
            "encode",
            "--tokenizer",
            not_tok.to_str().unwrap(),
            "x",
        ],
    ));
    assert!(
        err.contains(&format!("{}: not a tokenizer.json", not_tok.display())),
        "{err}"
    );
    // Word-level does not round-trip: exit 1 with the count.
    assert_ok(&cotext(
        tmp.path(),
        tmp.path(),
        &[
            "tokenizer",
            "train",
            "--text",
            text,
            "--kind",
            "word-level",
            "--vocab-size",
            "100",
            "--min-frequency",
            "1",
            "--out",
            tok_s,
        ],
    ));
    let out = cotext(
        tmp.path(),
        tmp.path(),
        &[
            "tokenizer",
            "roundtrip",
            "--tokenizer",
            tok_s,
            "--text",
            text,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("texts do not round-trip"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn tokenizer_on_multi30k_from_the_cli() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = data.to_str().unwrap();
    let tok = tmp.path().join("bpe.json");
    let tok = tok.to_str().unwrap();
    let out = assert_ok(&cotext(
        tmp.path(),
        tmp.path(),
        &[
            "tokenizer",
            "train",
            "--data",
            "multi30k-en-de",
            "--data-dir",
            dir,
            "--kind",
            "bpe",
            "--vocab-size",
            "8000",
            "--out",
            tok,
        ],
    ));
    assert!(
        out.contains("on 58000 texts of multi30k-en-de/train") && out.contains("vocab 8000"),
        "{out}"
    );
    for split in ["train", "val", "test"] {
        let out = assert_ok(&cotext(
            tmp.path(),
            tmp.path(),
            &[
                "tokenizer",
                "roundtrip",
                "--tokenizer",
                tok,
                "--data",
                "multi30k-en-de",
                "--split",
                split,
                "--data-dir",
                dir,
            ],
        ));
        let n = match split {
            "train" => 58000,
            "val" => 2028,
            _ => 2000,
        };
        assert!(
            out.starts_with(&format!(
                "{n}/{n} texts of multi30k-en-de/{split} round-trip exactly"
            )),
            "{out}"
        );
    }
}

#[test]
fn list_shows_every_card() {
    let tmp = tempfile::tempdir().unwrap();
    let out = assert_ok(&cotext(tmp.path(), tmp.path(), &["data", "list"]));
    for name in ["sst2", "sst5", "imdb", "multi30k-en-de", "iwslt15-en-vi"] {
        assert!(out.lines().any(|l| l.starts_with(name)), "{name}: {out}");
    }
    assert!(
        out.contains("hub dataset SetFit/sst2@00ea8ccb7a54b4e3780a3e51aa3f80361ff849c0"),
        "{out}"
    );
}

/// A tiny HTTP/1.1 server on the loopback interface: `handler(path, range
/// header)` gives the whole response; at most `max_requests` connections are
/// served, then its thread ends.
fn serve_with<F>(handler: F, max_requests: usize) -> String
where
    F: Fn(&str, Option<&str>) -> Vec<u8> + Send + 'static,
{
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut header = String::new();
                match reader.read_line(&mut header) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if header == "\r\n" => break,
                    Ok(_) => {
                        if let Some((name, value)) = header.split_once(':') {
                            if name.eq_ignore_ascii_case("range") {
                                range = Some(value.trim().to_string());
                            }
                        }
                    }
                }
            }
            let path = request
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/');
            let _ = stream.write_all(&handler(path, range.as_deref()));
        }
    });
    base
}

fn response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

/// Serves `files` by path (404 for anything else).
fn serve(files: Vec<(String, Vec<u8>)>, max_requests: usize) -> String {
    serve_with(
        move |path, _| match files.iter().find(|(p, _)| p == path) {
            Some((_, body)) => response("200 OK", &[], body),
            None => response("404 Not Found", &[], b""),
        },
        max_requests,
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn url_fetch_downloads_verifies_and_caches() {
    let tmp = tempfile::tempdir().unwrap();
    let en = b"A dog runs.\nTwo cats sleep.\n".to_vec();
    let de = "Ein Hund läuft.\nZwei Katzen schlafen.\n"
        .as_bytes()
        .to_vec();
    let base = serve(
        vec![("d/t.en".into(), en.clone()), ("d/t.de".into(), de.clone())],
        2,
    );
    let card = |name: &str, de_sha: &str| {
        format!(
            r#"name = "{name}"
title = "served parallel fixture"
task = "translation"
languages = ["en", "de"]
license = "test"
citation = "none"
splits = [{{ name = "t", count = 2 }}]
[[sources]]
kind = "local"
dir = "{name}"
format = "parallel"
files = [{{ split = "t", path = "t.en", role = "en" }}, {{ split = "t", path = "t.de", role = "de" }}]
[[sources]]
kind = "url"
base_url = "{base}d/"
format = "parallel"
files = [
  {{ split = "t", path = "t.en", role = "en", bytes = {}, sha256 = "{}" }},
  {{ split = "t", path = "t.de", role = "de", sha256 = "{de_sha}" }},
]
"#,
            en.len(),
            sha256_hex(&en)
        )
    };
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, card("served", &sha256_hex(&de))).unwrap();
    let out = assert_ok(&cotext(
        tmp.path(),
        tmp.path(),
        &["data", "fetch", good.to_str().unwrap()],
    ));
    assert!(
        out.contains("t.en: sha256 ok") && out.contains("t: 2 examples ok"),
        "{out}"
    );
    let cached = tmp.path().join("cotext/served");
    assert_eq!(std::fs::read(cached.join("t.de")).unwrap(), de);
    // The server has stopped: the cache answers, for fetch and for info.
    assert_ok(&cotext(
        tmp.path(),
        tmp.path(),
        &["data", "fetch", good.to_str().unwrap()],
    ));
    let out = assert_ok(&cotext(
        tmp.path(),
        tmp.path(),
        &["data", "info", good.to_str().unwrap()],
    ));
    assert!(
        out.contains("download cache") && row(&out, "t").starts_with("t 2 2 ok"),
        "{out}"
    );

    // A download whose sha256 differs is rejected and leaves nothing behind.
    let base2 = serve(
        vec![("d/t.en".into(), en.clone()), ("d/t.de".into(), de.clone())],
        2,
    );
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        card("served-bad", &"0".repeat(64)).replace(&base, &base2),
    )
    .unwrap();
    let err = assert_exit_2(&cotext(
        tmp.path(),
        tmp.path(),
        &["data", "fetch", bad.to_str().unwrap()],
    ));
    assert!(
        err.contains(&format!(
            "sha256 of {base2}d/t.de: expected {}",
            "0".repeat(64)
        )),
        "{err}"
    );
    let dir = tmp.path().join("cotext/served-bad");
    assert!(
        dir.join("t.en").is_file() && !dir.join("t.de").exists() && !dir.join("t.part").exists()
    );
}

/// A ustar header block for `name` (regular file `b'0'` or folder `b'5'`).
fn tar_entry(out: &mut Vec<u8>, name: &str, data: &[u8], kind: u8) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

#[test]
fn aclimdb_archive_is_downloaded_and_unpacked() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let mut tar = Vec::new();
    tar_entry(&mut tar, "aclImdb/", b"", b'5');
    let reviews = [
        ("train/neg/0_3.txt", "Dull."),
        ("train/neg/1_1.txt", "Awful<br />film."),
        ("train/pos/0_10.txt", "Loved it."),
        ("train/unsup/0_0.txt", "unlabelled"),
        ("test/neg/0_2.txt", "Boring."),
        ("test/pos/0_8.txt", "Fine."),
        ("test/pos/1_7.txt", "Good."),
    ];
    for (path, text) in reviews {
        tar_entry(&mut tar, &format!("aclImdb/{path}"), text.as_bytes(), b'0');
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let archive = gz.finish().unwrap();
    let base = serve(vec![("imdb/acl.tar.gz".into(), archive.clone())], 1);
    let card = tmp.path().join("acl.toml");
    std::fs::write(
        &card,
        format!(
            r#"name = "acl"
title = "served aclImdb fixture"
task = "classification"
labels = ["negative", "positive"]
license = "test"
citation = "none"
splits = [
  {{ name = "train", count = 3, label_counts = [2, 1], rating_counts = [1, 0, 1, 0, 0, 0, 0, 1] }},
  {{ name = "test", count = 3, label_counts = [1, 2], rating_counts = [0, 1, 0, 0, 1, 1, 0, 0] }},
]
[[sources]]
kind = "local"
dir = ""
format = "aclimdb"
files = [{{ split = "train", path = "aclImdb" }}, {{ split = "test", path = "aclImdb" }}]
[[sources]]
kind = "url"
base_url = "{base}imdb/"
format = "aclimdb"
archive = {{ split = "train", path = "acl.tar.gz", sha256 = "{}" }}
files = [{{ split = "train", path = "aclImdb" }}, {{ split = "test", path = "aclImdb" }}]
"#,
            sha256_hex(&archive)
        ),
    )
    .unwrap();
    let card = card.to_str().unwrap();
    let out = assert_ok(&cotext(tmp.path(), tmp.path(), &["data", "fetch", card]));
    assert!(
        out.contains("train: 3 examples ok") && out.contains("test: 3 examples ok"),
        "{out}"
    );
    let root = tmp.path().join("cotext/acl");
    assert!(root.join("aclImdb/train/pos/0_10.txt").is_file());
    assert!(!root.join("acl.tar.gz").exists() && !root.join(".partial").exists());
    let out = assert_ok(&cotext(
        tmp.path(),
        tmp.path(),
        &["data", "info", card, "--labels", "rating"],
    ));
    assert!(
        row(&out, "test").starts_with("test 3 3 ok 0 (0.0%) 1 (33.3%)"),
        "{out}"
    );
}

/// `cotext data fetch` through hf-hub's real download path, against a
/// loopback server that answers like the hub (`HF_ENDPOINT`): a ranged
/// metadata request (commit, etag, size), then the file. The files land in
/// the HF cache layout, and a second fetch is a cache hit with no server.
#[test]
fn hub_fetch_downloads_into_the_hf_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let files: Vec<(String, Vec<u8>)> = vec![
        (
            "train.jsonl".into(),
            jsonl(&[("a", 0), ("b", 2), ("c", 3), ("d", 4)]).into_bytes(),
        ),
        (
            "dev.jsonl".into(),
            jsonl(&[("e", 1), ("f", 4)]).into_bytes(),
        ),
        ("test.jsonl".into(), jsonl(&[("g", 3)]).into_bytes()),
    ];
    let commit = "fedcba9876543210fedcba9876543210fedcba98";
    let prefix = "datasets/cotext-tests/tiny-sst/resolve/main/";
    let endpoint = serve_with(
        move |path, range| {
            let Some(name) = path.strip_prefix(prefix) else {
                return response("404 Not Found", &[], b"");
            };
            let Some((_, body)) = files.iter().find(|(p, _)| p == name) else {
                return response("404 Not Found", &[], b"");
            };
            let start: usize = range
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let end = if range == Some("bytes=0-0") {
                1
            } else {
                body.len()
            };
            let headers = [
                ("x-repo-commit", commit.to_string()),
                ("etag", format!("\"{}\"", sha256_hex(body))),
                (
                    "content-range",
                    format!("bytes {start}-{}/{}", end - 1, body.len()),
                ),
            ];
            response("206 Partial Content", &headers, &body[start..end])
        },
        6,
    );
    let card = fixtures().join("tiny-sst/card.toml");
    let card = card.to_str().unwrap();
    let fetch = || {
        Command::new(env!("CARGO_BIN_EXE_cotext"))
            .args(["data", "fetch", card])
            .current_dir(tmp.path())
            .env_remove("COTEXT_DATA")
            .env("HF_HOME", &home)
            .env("HF_ENDPOINT", endpoint.trim_end_matches('/'))
            .output()
            .unwrap()
    };
    let out = assert_ok(&fetch());
    assert!(
        out.contains("train: 4 examples ok") && out.contains("test: 1 examples ok"),
        "{out}"
    );
    let repo = home.join("hub/datasets--cotext-tests--tiny-sst");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        commit
    );
    assert!(repo
        .join("snapshots")
        .join(commit)
        .join("dev.jsonl")
        .is_file());
    // The server is gone (it served its 6 requests): the cache answers.
    assert_ok(&fetch());
    let out = assert_ok(&cotext(tmp.path(), &home, &["data", "info", card]));
    assert!(
        out.contains("HF cache (hub dataset cotext-tests/tiny-sst@main)"),
        "{out}"
    );
}

/// Translation pairs from a hub JSON Lines copy (`{"en", "de"}`); a split
/// whose count differs from the card is flagged and the command exits 1.
#[test]
fn hub_translation_copy_and_count_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let line = |en: &str, de: &str| format!("{}\n", serde_json::json!({"en": en, "de": de}));
    let two = line("A dog.", "Ein Hund.") + &line("Two cats sleep.", "Zwei Katzen schlafen.");
    fake_hub_cache(
        tmp.path(),
        "bentrevett/multi30k",
        "main",
        &[
            ("train.jsonl", two.clone()),
            ("val.jsonl", two.clone()),
            ("test.jsonl", two),
        ],
    );
    let out = cotext(tmp.path(), tmp.path(), &["data", "info", "multi30k-en-de"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("HF cache (hub dataset bentrevett/multi30k@main)"),
        "{text}"
    );
    assert_eq!(
        row(&text, "train"),
        "train 2 29000 MISMATCH 2/3/3/3/3 2/3/3/3/3"
    );
    assert!(
        text.contains("MISMATCH train: 2 examples, card says 29000"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("3 split(s) differ from the card"),
        "{}",
        stderr(&out)
    );
}

/// Your own data: a card with `format = "table"` over local CSV files whose
/// labels are names from the card.
#[test]
fn own_csv_dataset_through_a_card() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("reviews");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("train.csv"),
        "id,review,sentiment\n1,\"Loved it, \"\"truly\"\".\",pos\n2,Meh.,neg\n3,Great fun,pos\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("test.csv"),
        "id,review,sentiment\n4,Bad,neg\n5,Bad,maybe\n",
    )
    .unwrap();
    let card = tmp.path().join("reviews.toml");
    std::fs::write(
        &card,
        r#"name = "reviews"
title = "my reviews"
task = "classification"
labels = ["neg", "pos"]
license = "mine"
citation = "none"
splits = [{ name = "train", count = 3, label_counts = [1, 2] }, { name = "test", count = 2 }]
[[sources]]
kind = "local"
dir = "reviews"
format = "table"
table_format = "csv"
text_column = "review"
label_column = "sentiment"
files = [{ split = "train", path = "train.csv" }, { split = "test", path = "test.csv" }]
[[sources]]
kind = "url"
base_url = "http://127.0.0.1:9/"
format = "table"
table_format = "csv"
text_column = "review"
label_column = "sentiment"
files = [{ split = "train", path = "train.csv" }]
"#,
    )
    .unwrap();
    let args = [
        "data",
        "info",
        card.to_str().unwrap(),
        "--data-dir",
        tmp.path().to_str().unwrap(),
    ];
    let err = assert_exit_2(&cotext(tmp.path(), tmp.path(), &args));
    assert!(
        err.contains(&format!(
            "{}:3: bad label \"maybe\": expected one of [\"neg\", \"pos\"] or an integer 0-1",
            dir.join("test.csv").display()
        )),
        "{err}"
    );
    std::fs::write(
        dir.join("test.csv"),
        "id,review,sentiment\n4,Bad,neg\n5,Good,1\n",
    )
    .unwrap();
    let out = assert_ok(&cotext(tmp.path(), tmp.path(), &args));
    assert!(
        row(&out, "train").starts_with("train 3 3 ok 1 (33.3%) 2 (66.7%) 2/3/3/3/3"),
        "{out}"
    );
    assert!(
        row(&out, "test").starts_with("test 2 2 ok 1 (50.0%) 1 (50.0%)"),
        "{out}"
    );
}

/// A 10 MB line and non-UTF-8 bytes: exit 2 naming the file and line, no panic.
#[test]
fn huge_line_and_bad_bytes_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-sst");
    std::fs::create_dir_all(&dir).unwrap();
    for split in ["dev", "test"] {
        let name = format!("{split}.tsv");
        std::fs::copy(fixtures().join("tiny-sst").join(&name), dir.join(&name)).unwrap();
    }
    let card = fixtures().join("tiny-sst/card.toml");
    let args = [
        "data",
        "info",
        card.to_str().unwrap(),
        "--data-dir",
        tmp.path().to_str().unwrap(),
    ];
    let mut huge = b"sentence\tlabel\nfine\t1\n".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 10 << 20));
    huge.extend_from_slice(b"\t1\n");
    let cases: [(Vec<u8>, &str); 2] = [
        (huge, "3: line is longer than the limit of 1048576 bytes"),
        (
            b"sentence\tlabel\nfine\t1\nna\xefve\t2\n".to_vec(),
            "3: invalid UTF-8: byte 0xef at byte 3 of the line",
        ),
    ];
    for (bytes, msg) in cases {
        let train = dir.join("train.tsv");
        std::fs::write(&train, bytes).unwrap();
        let err = assert_exit_2(&cotext(tmp.path(), tmp.path(), &args));
        assert!(err.contains(&format!("{}:{msg}", train.display())), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
