//! BLEU and chrF against sacreBLEU 2.6.0: every number in `tests/golden/bleu.json`
//! was produced by `tests/golden/make_bleu_golden.py` with the Python package.

use std::collections::HashMap;

use cotext::metrics::bleu::{Bleu, BleuConfig, Smoothing, Tokenize};
use cotext::metrics::chrf::{Chrf, ChrfConfig};
use cotext::metrics::text::{is_py_space, py_split};
use serde_json::Value;

fn golden() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/bleu.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn corpora(g: &Value) -> HashMap<String, Vec<String>> {
    g["corpora"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn close(a: f64, b: f64, what: &str, case: &str) {
    assert!((a - b).abs() <= 1e-9, "{case}: {what} {a} != sacreBLEU {b}");
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn ints(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn bleu_config(opts: &Value) -> BleuConfig {
    let tokenize = opts
        .get("tokenize")
        .map_or(Tokenize::V13a, |t| t.as_str().unwrap().parse().unwrap());
    let smooth_value = opts.get("smooth_value").and_then(Value::as_f64);
    let smoothing = Smoothing::from_name(
        opts.get("smooth_method")
            .map_or("exp", |s| s.as_str().unwrap()),
        smooth_value,
    )
    .unwrap();
    BleuConfig {
        tokenize,
        lowercase: opts.get("lowercase").is_some_and(|v| v.as_bool().unwrap()),
        smoothing,
        max_ngram_order: opts
            .get("max_ngram_order")
            .map_or(4, |v| v.as_u64().unwrap() as usize),
        effective_order: opts
            .get("effective_order")
            .is_some_and(|v| v.as_bool().unwrap()),
    }
}

fn chrf_config(opts: &Value) -> ChrfConfig {
    let d = ChrfConfig::default();
    let get = |k: &str| opts.get(k);
    ChrfConfig {
        char_order: get("char_order").map_or(d.char_order, |v| v.as_u64().unwrap() as usize),
        word_order: get("word_order").map_or(d.word_order, |v| v.as_u64().unwrap() as usize),
        beta: get("beta").map_or(d.beta, |v| v.as_u64().unwrap() as u32),
        lowercase: get("lowercase").is_some_and(|v| v.as_bool().unwrap()),
        whitespace: get("whitespace").is_some_and(|v| v.as_bool().unwrap()),
        eps_smoothing: get("eps_smoothing").is_some_and(|v| v.as_bool().unwrap()),
    }
}

#[test]
fn golden_file_is_from_the_sacrebleu_version_we_claim() {
    assert_eq!(
        golden()["sacrebleu_version"],
        cotext::metrics::bleu::SACREBLEU_VERSION
    );
}

#[test]
fn bleu_equals_sacrebleu_on_every_case() {
    let g = golden();
    let corpora = corpora(&g);
    let mut n = 0;
    for case in g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["metric"] == "bleu")
    {
        let name = case["name"].as_str().unwrap();
        let hyps = &corpora[case["hyp"].as_str().unwrap()];
        let refs: Vec<Vec<String>> = case["refs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| corpora[r.as_str().unwrap()].clone())
            .collect();
        let bleu = Bleu::new(bleu_config(&case["options"])).unwrap();
        let got = bleu.corpus_score(hyps, &refs).unwrap();
        let exp = &case["expected"];
        close(got.score, exp["score"].as_f64().unwrap(), "score", name);
        assert_eq!(got.counts, ints(&exp["counts"]), "{name}: counts");
        assert_eq!(got.totals, ints(&exp["totals"]), "{name}: totals");
        for (a, b) in got.precisions.iter().zip(floats(&exp["precisions"])) {
            close(*a, b, "precision", name);
        }
        close(got.bp, exp["bp"].as_f64().unwrap(), "bp", name);
        close(got.ratio, exp["ratio"].as_f64().unwrap(), "ratio", name);
        assert_eq!(
            got.sys_len,
            exp["sys_len"].as_u64().unwrap(),
            "{name}: sys_len"
        );
        assert_eq!(
            got.ref_len,
            exp["ref_len"].as_u64().unwrap(),
            "{name}: ref_len"
        );
        assert_eq!(
            bleu.signature(refs.len()).to_string(),
            exp["signature"].as_str().unwrap(),
            "{name}: signature"
        );
        assert_eq!(
            got.verbose(),
            exp["verbose"].as_str().unwrap(),
            "{name}: verbose"
        );
        n += 1;
    }
    assert!(n >= 70, "only {n} BLEU cases");
}

#[test]
fn chrf_equals_sacrebleu_on_every_case() {
    let g = golden();
    let corpora = corpora(&g);
    let mut n = 0;
    for case in g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["metric"] == "chrf")
    {
        let name = case["name"].as_str().unwrap();
        let hyps = &corpora[case["hyp"].as_str().unwrap()];
        let refs: Vec<Vec<String>> = case["refs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| corpora[r.as_str().unwrap()].clone())
            .collect();
        let chrf = Chrf::new(chrf_config(&case["options"])).unwrap();
        let got = chrf.corpus_score(hyps, &refs).unwrap();
        let exp = &case["expected"];
        close(got.score, exp["score"].as_f64().unwrap(), "score", name);
        assert_eq!(got.name, exp["name"].as_str().unwrap(), "{name}: name");
        let stats: Vec<Vec<u64>> = exp["stats"].as_array().unwrap().iter().map(ints).collect();
        assert_eq!(
            got.stats.iter().map(|s| s.to_vec()).collect::<Vec<_>>(),
            stats,
            "{name}: stats"
        );
        assert_eq!(
            chrf.signature(refs.len()).to_string(),
            exp["signature"].as_str().unwrap(),
            "{name}: signature"
        );
        n += 1;
    }
    assert!(n >= 40, "only {n} chrF cases");
}

#[test]
fn tokenizers_equal_sacrebleu_line_by_line() {
    let g = golden();
    for t in g["tokenize"].as_array().unwrap() {
        let tok: Tokenize = t["tokenizer"].as_str().unwrap().parse().unwrap();
        let input = t["input"].as_str().unwrap();
        let want = t["output"].as_str().unwrap();
        if matches!(tok, Tokenize::Char | Tokenize::None) {
            // sacreBLEU's char and none tokenizers leave whitespace as it is
            // (char even spaces it out); BLEU only ever sees their split() words.
            assert_eq!(
                tok.tokenize(input),
                py_split(want).collect::<Vec<_>>().join(" "),
                "{input:?}"
            );
        } else {
            assert_eq!(tok.tokenize(input), want, "{tok} on {input:?}");
        }
    }
}

#[test]
fn lowercasing_equals_python_str_lower() {
    for t in golden()["lower"].as_array().unwrap() {
        let input = t["input"].as_str().unwrap();
        assert_eq!(
            input.to_lowercase(),
            t["output"].as_str().unwrap(),
            "{input:?}"
        );
    }
}

#[test]
fn whitespace_equals_python_str_isspace() {
    let want: Vec<u32> = ints(&golden()["py_whitespace"])
        .into_iter()
        .map(|c| c as u32)
        .collect();
    let got: Vec<u32> = (0..0x110000u32)
        .filter_map(char::from_u32)
        .filter(|&c| is_py_space(c))
        .map(|c| c as u32)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn unequal_line_counts_are_an_error_in_the_library_too() {
    let bleu = Bleu::new(BleuConfig::default()).unwrap();
    let err = bleu.corpus_score(&["a", "b"], &[vec!["a"]]).unwrap_err();
    assert!(err.is_user_error());
    assert_eq!(
        err.to_string(),
        "line counts differ: hypotheses has 2 lines but references has 1"
    );
    let err = bleu
        .corpus_score(&["a"], &[vec!["a"], vec!["a", "b"]])
        .unwrap_err();
    assert!(matches!(err, cotext::Error::LineCount { .. }));
    let chrf = Chrf::new(ChrfConfig::default()).unwrap();
    assert!(chrf.corpus_score(&["a"], &[Vec::<&str>::new()]).is_err());
}

#[test]
fn cached_references_score_like_fresh_ones() {
    let g = golden();
    let c = corpora(&g);
    let refs = vec![c["en_ref"].clone(), c["en_ref2"].clone()];
    let bleu = Bleu::new(BleuConfig::default()).unwrap();
    let cache = bleu.references(&refs).unwrap();
    let names = ["en_hyp", "en_hyp_noisy", "en_ref3"];
    for hyp in names {
        assert_eq!(
            cache.corpus_score(&c[hyp]).unwrap(),
            bleu.corpus_score(&c[hyp], &refs).unwrap()
        );
    }
    // Several systems in one pass score as each alone.
    let systems: Vec<&[String]> = names.iter().map(|n| c[*n].as_slice()).collect();
    let together = cache.corpus_scores(&systems).unwrap();
    for (hyp, s) in names.iter().zip(&together) {
        assert_eq!(*s, cache.corpus_score(&c[*hyp]).unwrap(), "{hyp}");
    }
    assert_ne!(together[0], together[1]);
    let chrf = Chrf::new(ChrfConfig {
        word_order: 2,
        ..ChrfConfig::default()
    })
    .unwrap();
    let chrf_cache = chrf.references(&refs).unwrap();
    let together = chrf_cache.corpus_scores(&systems).unwrap();
    for (hyp, s) in names.iter().zip(&together) {
        assert_eq!(*s, chrf.corpus_score(&c[*hyp], &refs).unwrap(), "{hyp}");
    }
}
