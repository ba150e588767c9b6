//! Tokenizers on real text: byte-level BPE decodes every Multi30k line back
//! exactly, Unigram does on its (small) training slice, head+tail truncation
//! on long IMDB reviews. Skipped, with a printed reason, without the shared data.

mod common;

use std::path::{Path, PathBuf};

use cotext::data::parallel::read_lines;
use cotext::data::{DataDir, Dataset, LoadOptions, SplitData};
use cotext::tokenize::{
    train, EncodeOptions, TextTokenizer, TokenizerKind, TrainConfig, Truncation,
};

fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("COTEXT_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/datasets"))
        });
    if dir.join("README.md").is_file() {
        Some(dir)
    } else {
        common::skip(&format!(
            "no shared datasets at {} (set COTEXT_DATA)",
            dir.display()
        ));
        None
    }
}

fn multi30k_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for split in ["train", "val", "test_2016_flickr"] {
        for lang in ["en", "de"] {
            lines.extend(read_lines(&dir.join(format!("multi30k/{split}.{lang}"))).unwrap());
        }
    }
    assert_eq!(lines.len(), 2 * (29000 + 1014 + 1000));
    lines
}

fn assert_round_trip(tokenizer: &TextTokenizer, lines: &[String]) {
    for (i, line) in lines.iter().enumerate() {
        let ids = tokenizer.encode(line).unwrap();
        assert!(!ids.is_empty() || line.is_empty());
        let back = tokenizer.decode(&ids, true).unwrap();
        assert_eq!(&back, line, "line {i}");
    }
}

#[test]
fn byte_level_bpe_round_trips_every_multi30k_line() {
    let Some(dir) = shared() else { return };
    let lines = multi30k_lines(&dir);
    // Trained on train only; val and test lines are unseen text.
    let train_lines = &lines[..58000];
    let config = TrainConfig {
        kind: TokenizerKind::Bpe,
        vocab_size: 8000,
        ..TrainConfig::default()
    };
    let tokenizer = train(train_lines.iter().map(String::as_str), &config).unwrap();
    assert_eq!(tokenizer.vocab_size(), 8000);
    assert_round_trip(&tokenizer, &lines);
    // Never unknown: byte-level BPE covers every byte.
    let unk = tokenizer.unk_id().unwrap();
    assert!(lines
        .iter()
        .all(|l| !tokenizer.encode(l).unwrap().contains(&unk)));
    // Also text it has never seen: other scripts, emoji, control characters.
    let odd = [
        "Ẩm thực Việt Nam 🍜",
        "tab\there  two  spaces ",
        "\u{85}NEL and \u{8} backspace",
        "",
    ];
    assert_round_trip(&tokenizer, &odd.map(String::from));
}

#[test]
fn unigram_round_trips_its_training_slice() {
    let Some(dir) = shared() else { return };
    // Unigram training is slow (about 2 minutes on 13 MB): a 600-line slice.
    let mut slice = read_lines(&dir.join("multi30k/train.en")).unwrap();
    slice.truncate(300);
    slice.extend(
        read_lines(&dir.join("multi30k/train.de"))
            .unwrap()
            .into_iter()
            .take(300),
    );
    let config = TrainConfig {
        kind: TokenizerKind::Unigram,
        vocab_size: 1000,
        ..TrainConfig::default()
    };
    let tokenizer = train(slice.iter().map(String::as_str), &config).unwrap();
    assert!(tokenizer.vocab_size() <= 1000);
    assert_round_trip(&tokenizer, &slice);
    // A character never seen in training becomes <unk>: not lossless.
    let ids = tokenizer.encode("Ẩm").unwrap();
    assert!(ids.contains(&tokenizer.unk_id().unwrap()));
}

#[test]
fn head_tail_truncation_on_long_imdb_reviews() {
    let Some(dir) = shared() else { return };
    let imdb = Dataset::open("imdb", &DataDir::Flag(dir)).unwrap();
    let SplitData::Classification(examples) = imdb.load("test", &LoadOptions::default()).unwrap()
    else {
        unreachable!()
    };
    let texts: Vec<&str> = examples
        .iter()
        .take(2000)
        .map(|e| e.text.as_str())
        .collect();
    let config = TrainConfig {
        kind: TokenizerKind::Bpe,
        vocab_size: 4000,
        ..TrainConfig::default()
    };
    let tokenizer = train(texts.iter().copied(), &config).unwrap();
    let options = EncodeOptions {
        add_bos: true,
        add_eos: true,
        truncation: Truncation::HeadTail {
            max_len: 512,
            head: 128,
        },
    };
    let batch = tokenizer.encode_batch(&texts[..64], &options).unwrap();
    assert_eq!(batch.rows, 64);
    let mut long = 0;
    for (r, text) in texts[..64].iter().enumerate() {
        let full = tokenizer.encode(text).unwrap();
        let row = batch.row(r);
        assert_eq!(row[0], tokenizer.bos_id().unwrap());
        assert_eq!(*row.last().unwrap(), tokenizer.eos_id().unwrap());
        if full.len() > 510 {
            long += 1;
            assert_eq!(row.len(), 512);
            assert_eq!(&row[1..129], &full[..128]);
            assert_eq!(&row[129..511], &full[full.len() - 382..]);
        } else {
            assert_eq!(&row[1..row.len() - 1], &full[..]);
        }
        assert!(
            batch.mask[r * batch.cols..(r + 1) * batch.cols]
                .iter()
                .map(|&m| m as usize)
                .sum::<usize>()
                == row.len()
        );
    }
    assert!(long > 0, "some reviews are longer than 512 tokens");
    assert_eq!(batch.cols, batch.lengths.iter().copied().max().unwrap());
}

#[test]
fn word_level_and_wordpiece_train_and_map_unknowns() {
    let texts = [
        "the cat sat on the mat .",
        "the dog sat on the log .",
        "a cat and a dog .",
    ];
    for kind in [TokenizerKind::WordLevel, TokenizerKind::WordPiece] {
        let config = TrainConfig {
            kind,
            vocab_size: 60,
            min_frequency: 1,
            ..TrainConfig::default()
        };
        let tokenizer = train(texts.iter().copied(), &config).unwrap();
        let ids = tokenizer.encode("the cat sat .").unwrap();
        assert_eq!(ids.len(), 4, "{kind:?}");
        assert!(!ids.contains(&tokenizer.unk_id().unwrap()), "{kind:?}");
        let unk = tokenizer.encode("the zebra").unwrap();
        assert_eq!(unk.last(), tokenizer.unk_id().as_ref(), "{kind:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok.json");
        tokenizer.save(&path).unwrap();
        let loaded = TextTokenizer::from_file(&path).unwrap();
        assert_eq!(loaded.encode("the cat sat .").unwrap(), ids, "{kind:?}");
    }
    let err = train(
        texts.iter().copied(),
        &TrainConfig {
            vocab_size: 100,
            ..TrainConfig::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
}

/// A hand-written BERT-style `tokenizer.json` (lower-casing normalizer,
/// WordPiece, `[PAD] [UNK] [CLS] [SEP]`): loads, finds BERT's special tokens,
/// encodes with `##` pieces and decodes with the WordPiece decoder.
#[test]
fn loads_a_hugging_face_bert_tokenizer_json() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-bert/tokenizer.json");
    let tokenizer = TextTokenizer::from_file(&path).unwrap();
    assert_eq!(tokenizer.vocab_size(), 13);
    assert_eq!(tokenizer.special().pad, "[PAD]");
    assert_eq!(
        (
            tokenizer.pad_id(),
            tokenizer.bos_id(),
            tokenizer.eos_id(),
            tokenizer.unk_id()
        ),
        (0, Some(2), Some(3), Some(1))
    );
    let options = EncodeOptions {
        add_bos: true,
        add_eos: true,
        truncation: Truncation::None,
    };
    let batch = tokenizer
        .encode_batch(&["The film was UNBELIEVABLE!", "great zebra"], &options)
        .unwrap();
    assert_eq!(batch.row(0), [2, 4, 5, 6, 9, 10, 11, 8, 3]);
    assert_eq!(batch.row(1), [2, 7, 1, 3]);
    assert_eq!(&batch.ids[9..], [2, 7, 1, 3, 0, 0, 0, 0, 0]);
    assert_eq!(
        tokenizer.decode(batch.row(0), true).unwrap(),
        "the film was unbelievable!"
    );
}

#[test]
fn minilm_tokenizer_loads_without_its_fixed_padding_and_truncation() {
    let dir = std::env::var_os("COTEXT_MINILM")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/cotext/all-minilm-l6-v2"))
        });
    let Some(path) = dir
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.is_file())
    else {
        common::skip("all-MiniLM-L6-v2 not fetched (bash scripts/fetch-minilm.sh)");
        return;
    };
    let tok = cotext::tokenize::TextTokenizer::from_file(&path).unwrap();
    // The file pads every encoding to 128 and truncates there; loaded, it must not.
    assert_eq!(tok.encode("hello world").unwrap().len(), 2);
    let long = "word ".repeat(300);
    assert_eq!(tok.encode(&long).unwrap().len(), 300);
    let ids = tok
        .encode_with(
            "a fine film",
            &cotext::tokenize::EncodeOptions {
                add_bos: true,
                add_eos: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(ids.first(), tok.bos_id().as_ref());
    assert_eq!(ids.last(), tok.eos_id().as_ref());
    assert_eq!(ids.len(), 5);
}
