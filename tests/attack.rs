//! `cotext attack` and `cotext::attack`: the embedding path is the forward pass
//! bit for bit, the gradient the attacks follow is the true one (finite
//! differences, every model kind), a zero budget is the clean accuracy of
//! `cotext eval`, PGD is at least as strong as FGSM, HotFlip never touches
//! special tokens, and bad flags exit 2 naming the flag.

mod models_support;

use models_support::common::{self, text};

fn cotext(cwd: &Path, args: &[&str]) -> Output {
    common::cotext(cwd, args, None)
}

fn shared() -> Option<PathBuf> {
    common::shared_datasets()
}

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{DType, Device, Result, Tensor};
use cotext::attack::{self, Budget, HotFlipOptions, Norm};
use cotext::models::{
    layers, BertConfig, BertPooling, BiLstmConfig, LstmPooling, Model, ModelConfig, Pooling,
    TransformerConfig,
};
use models_support::{batch, max_abs_diff, write_tiny_bert};

const VOCAB: usize = 50;
const CLASSES: usize = 4;

/// One model of each kind (the BERT one from a tiny random checkpoint in `dir`).
fn models(dir: &Path, dtype: DType) -> Vec<(&'static str, Model)> {
    write_tiny_bert(dir, false, 21).unwrap();
    let bilstm = BiLstmConfig {
        embed_dim: 6,
        hidden: 5,
        layers: 2,
        dropout: 0.3,
        pooling: LstmPooling::Max,
    };
    let transformer = TransformerConfig {
        d_model: 8,
        heads: 2,
        layers: 2,
        ffn_dim: 16,
        max_len: 16,
        pooling: Pooling::Mean,
        ..Default::default()
    };
    let mut bert = BertConfig::new(dir);
    bert.pooling = BertPooling::Cls;
    [
        ("bilstm", ModelConfig::Bilstm(bilstm)),
        ("transformer", ModelConfig::Transformer(transformer)),
        ("bert", ModelConfig::Bert(bert)),
    ]
    .into_iter()
    .map(|(name, cfg)| {
        (
            name,
            cfg.build(VOCAB, CLASSES, dtype, &Device::Cpu, 3)
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        )
    })
    .collect()
}

fn inputs() -> Result<(Tensor, Tensor, Tensor)> {
    let (ids, mask) = batch(VOCAB as u32, &[7, 4, 6], 7, 11)?;
    let labels = Tensor::new(&[0u32, 3, 1], &Device::Cpu)?;
    Ok((ids, mask, labels))
}

#[test]
fn forward_embeddings_of_embed_is_forward_bit_for_bit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ids, mask, _) = inputs()?;
    for (name, model) in models(dir.path(), DType::F32) {
        for train in [false, true] {
            let state = model.rng_state();
            let a = model.forward(&ids, &mask, train)?;
            // Replay the same dropout masks.
            model.set_rng_state(state);
            let b = model.forward_embeddings(&model.embed(&ids)?, &mask, train)?;
            assert_eq!(
                a.to_vec2::<f32>()?,
                b.to_vec2::<f32>()?,
                "{name} (train {train})"
            );
        }
        let table = model.embedding_table()?;
        let looked_up = table
            .index_select(&ids.flatten_all()?, 0)?
            .reshape(model.embed(&ids)?.shape())?;
        assert_eq!(
            max_abs_diff(&looked_up, &model.embed(&ids)?)?,
            0.0,
            "{name}: table row != embed"
        );
    }
    Ok(())
}

/// Under mixed precision the embeddings come out in the compute dtype, the
/// attack perturbs them in f32, and the gradient still reaches them.
#[test]
fn attacks_work_under_mixed_precision() -> Result<()> {
    let (ids, mask, labels) = inputs()?;
    let cfg = ModelConfig::Bilstm(BiLstmConfig {
        embed_dim: 6,
        hidden: 5,
        ..Default::default()
    });
    let model = cfg
        .build_mixed(VOCAB, CLASSES, DType::F32, DType::BF16, &Device::Cpu, 3)
        .unwrap();
    let emb = model.embed(&ids)?;
    assert_eq!(emb.dtype(), DType::BF16);
    let a = model.forward(&ids, &mask, false)?;
    let b = model.forward_embeddings(&emb, &mask, false)?;
    assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
    let forward = |e: &Tensor| model.forward_embeddings(e, &mask, false);
    let at = attack::loss_and_gradient(forward, &emb, &labels)?;
    let norm = at.gradient.sqr()?.sum_all()?.to_scalar::<f32>()?;
    assert!(norm.is_finite() && norm > 0.0, "gradient norm² {norm}");
    let adv = attack::fgsm(
        forward,
        &emb,
        &mask,
        &labels,
        Budget {
            eps: 0.5,
            norm: Norm::L2,
        },
    )?;
    assert_eq!(adv.dtype(), DType::F32);
    let before = at.losses.sum_all()?.to_scalar::<f32>()?;
    let after = attack::loss_and_gradient(forward, &adv, &labels)?
        .losses
        .sum_all()?
        .to_scalar::<f32>()?;
    assert!(after > before, "{after} <= {before}");
    Ok(())
}

/// Σ_b cross-entropy in f64, for finite differences.
fn loss64(model: &Model, emb: &Tensor, mask: &Tensor, labels: &Tensor) -> Result<f64> {
    let logits = model
        .forward_embeddings(emb, mask, false)?
        .to_dtype(DType::F64)?;
    let logp = layers::log_softmax_last_dim(&logits)?;
    logp.gather(&labels.unsqueeze(1)?, 1)?
        .sum_all()?
        .neg()?
        .to_scalar::<f64>()
}

/// The gradient the attacks follow matches central differences of the loss, is
/// non-zero at every real token and zero at padding (candle drops gradients
/// silently on some ops: this is the guard); and the FGSM step raises the loss by
/// what the gradient predicts.
#[test]
fn embedding_gradient_matches_finite_differences_for_every_model_kind() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ids, mask, labels) = inputs()?;
    let keep = mask.to_vec2::<u32>()?;
    for (name, model) in models(dir.path(), DType::F64) {
        let emb = model.embed(&ids)?;
        assert_eq!(emb.dtype(), DType::F64);
        let forward = |e: &Tensor| model.forward_embeddings(e, &mask, false);
        let at = attack::loss_and_gradient(forward, &emb, &labels)?;
        let g = at.gradient.to_dtype(DType::F64)?;
        let token_norms = g.sqr()?.sum(2)?.sqrt()?.to_vec2::<f64>()?;
        for (b, row) in token_norms.iter().enumerate() {
            for (t, &n) in row.iter().enumerate() {
                if keep[b][t] == 1 {
                    assert!(n > 1e-9, "{name}: no gradient at real token ({b}, {t})");
                } else {
                    assert!(n < 1e-12, "{name}: gradient {n} at padding ({b}, {t})");
                }
            }
        }
        let gv = g.to_vec3::<f64>()?;
        let d = emb.dim(2)?;
        let h = 1e-5;
        for &(b, t, k) in &[(0, 0, 0), (0, 6, d - 1), (1, 2, 1), (2, 5, 3)] {
            let mut bump = vec![0f64; emb.elem_count()];
            bump[(b * 7 + t) * d + k] = h;
            let bump = Tensor::from_vec(bump, emb.shape(), &Device::Cpu)?;
            let up = loss64(&model, &(&emb + &bump)?, &mask, &labels)?;
            let down = loss64(&model, &(&emb - &bump)?, &mask, &labels)?;
            let fd = (up - down) / (2.0 * h);
            let an = gv[b][t][k];
            assert!(
                (fd - an).abs() <= 1e-4 * (1.0 + an.abs()),
                "{name} ({b},{t},{k}): finite difference {fd} vs gradient {an}"
            );
        }
        // FGSM moves along the gradient: a small step raises the loss by g·δ.
        let adv = attack::fgsm(
            forward,
            &emb,
            &mask,
            &labels,
            Budget {
                eps: 1e-4,
                norm: Norm::Linf,
            },
        )?
        .to_dtype(DType::F64)?;
        let delta = (&adv - &emb)?;
        let predicted = (&g * &delta)?.sum_all()?.to_scalar::<f64>()?;
        let actual = loss64(&model, &adv, &mask, &labels)? - loss64(&model, &emb, &mask, &labels)?;
        assert!(
            predicted > 0.0,
            "{name}: FGSM step is not an ascent direction"
        );
        assert!(
            (actual - predicted).abs() <= 0.05 * predicted,
            "{name}: loss rose by {actual}, the gradient predicts {predicted}"
        );
    }
    Ok(())
}

// ---- the CLI on a tiny BiLSTM trained on a slice of SST-5 ----

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// A BiLSTM trained for a few epochs on 240 SST-5 sentences, in `dir/run`.
fn train_tiny(dir: &Path, data: &Path) -> PathBuf {
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\ndataset = \"sst5\"\ndata_dir = {data:?}\nmax_len = 24\ntrain_limit = 240\neval_limit = 64\n\n\
             [model]\nkind = \"bilstm\"\nembed_dim = 16\nhidden = 16\n\n\
             [train]\nobjective = \"ce\"\nbatch_size = 16\nepochs = 4\neval_batch_size = 32\n"
        ),
    )
    .unwrap();
    let run = dir.join("run");
    let o = cotext(
        dir,
        &[
            "train",
            "-q",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    run
}

fn attack_json(dir: &Path, run: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "attack",
        "-q",
        "--run",
        run.to_str().unwrap(),
        "--split",
        "test",
        "--limit",
        "96",
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    json(&cotext(dir, &args))
}

fn field(v: &serde_json::Value, i: usize, key: &str) -> f64 {
    v["attacks"][i][key]
        .as_f64()
        .unwrap_or_else(|| panic!("attacks[{i}].{key} in {v}"))
}

#[test]
fn attack_cli_on_a_trained_tiny_model() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = train_tiny(dir, &data);
    let run_s = run.to_str().unwrap();

    // ε = 0 (and K = 0) is exactly the accuracy `cotext eval` reports on the same examples.
    let full_eval = json(&cotext(
        dir,
        &[
            "eval", "--run", run_s, "--split", "test", "--format", "json",
        ],
    ));
    let full = json(&cotext(
        dir,
        &[
            "attack", "-q", "--run", run_s, "--split", "test", "--method", "fgsm", "--eps", "0",
            "--format", "json",
        ],
    ));
    assert_eq!(full["clean"]["accuracy"], full_eval["accuracy"]);
    assert_eq!(full["clean"]["macro_f1"], full_eval["macro_f1"]);
    assert_eq!(full["attacks"][0]["accuracy"], full_eval["accuracy"]);
    assert_eq!(full["attacks"][0]["n"], full_eval["count"]);
    for method in [
        ["--method", "pgd", "--eps", "0"],
        ["--method", "hotflip", "--flips", "0"],
    ] {
        let v = attack_json(dir, &run, &method);
        assert_eq!(
            v["attacks"][0]["accuracy"], v["clean"]["accuracy"],
            "{method:?}"
        );
        assert_eq!(v["attacks"][0]["loss"], v["clean"]["loss"], "{method:?}");
    }

    // Larger budgets hurt more; PGD is at least as strong as FGSM at the same ε.
    let eps = "0.05,0.2,0.5";
    let fgsm = attack_json(dir, &run, &["--method", "fgsm", "--eps", eps]);
    let pgd = attack_json(
        dir,
        &run,
        &["--method", "pgd", "--eps", eps, "--steps", "5"],
    );
    let clean = fgsm["clean"]["accuracy"].as_f64().unwrap();
    for i in 0..3 {
        assert!(
            field(&fgsm, i, "loss") > fgsm["clean"]["loss"].as_f64().unwrap(),
            "fgsm[{i}] did not raise the loss: {fgsm}"
        );
        assert!(
            field(&pgd, i, "loss") >= field(&fgsm, i, "loss"),
            "pgd weaker than fgsm at {}: {pgd} vs {fgsm}",
            field(&pgd, i, "eps")
        );
        assert!(field(&pgd, i, "accuracy") <= clean);
        if i > 0 {
            assert!(
                field(&pgd, i, "loss") >= field(&pgd, i - 1, "loss"),
                "pgd loss fell as ε grew: {pgd}"
            );
        }
    }
    // Deterministic for a seed; another seed draws other random starts.
    let again = attack_json(
        dir,
        &run,
        &["--method", "pgd", "--eps", eps, "--steps", "5"],
    );
    assert_eq!(again["attacks"], pgd["attacks"]);
    let l2 = attack_json(
        dir,
        &run,
        &[
            "--method", "pgd", "--eps", "0.2", "--norm", "l2", "--steps", "3", "--seed", "9",
        ],
    );
    assert!(
        field(&l2, 0, "loss") > l2["clean"]["loss"].as_f64().unwrap(),
        "{l2}"
    );

    // HotFlip: more flips, lower accuracy; never more flips than allowed.
    let hf = attack_json(dir, &run, &["--method", "hotflip", "--flips", "0,1,2"]);
    for i in 0..3 {
        assert!(field(&hf, i, "flips_mean") <= i as f64, "{hf}");
        if i > 0 {
            assert!(
                field(&hf, i, "accuracy") <= field(&hf, i - 1, "accuracy"),
                "{hf}"
            );
        }
    }
    assert!(
        field(&hf, 2, "accuracy") < clean,
        "two flips changed nothing: {hf}"
    );

    // The text report names the scale and prints one row per budget.
    let o = cotext(
        dir,
        &[
            "attack", "-q", "--run", run_s, "--limit", "32", "--method", "fgsm", "--eps", "0.1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("mean token-embedding norm") && out.contains("clean") && out.contains("0.1 "),
        "{out}"
    );

    hotflip_never_touches_special_tokens(&run);
}

/// Run on the library with the loaded run: inserted ids are never special, and
/// padding, BOS and EOS positions keep their ids.
fn hotflip_never_touches_special_tokens(run: &Path) {
    let (setup, model) =
        cotext::infer::classify::load_run(run, &cotext::train::run_device(run).unwrap()).unwrap();
    let tok = &setup.tokenizer;
    let allowed = attack::hotflip_candidates(tok);
    for id in [Some(tok.pad_id()), tok.bos_id(), tok.eos_id(), tok.unk_id()]
        .into_iter()
        .flatten()
    {
        assert!(!allowed[id as usize], "special id {id} is a candidate");
    }
    let texts = [
        "a gorgeous , witty , seductive movie .",
        "the plot is nothing but boilerplate clichés",
        "ok",
    ];
    let seqs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            tok.encode_with(
                t,
                &cotext::tokenize::EncodeOptions {
                    add_bos: true,
                    add_eos: true,
                    ..Default::default()
                },
            )
            .unwrap()
        })
        .collect();
    let padded = cotext::tokenize::PaddedBatch::pad(&seqs, tok.pad_id());
    let shape = (padded.rows, padded.cols);
    let ids = Tensor::from_vec(padded.ids.clone(), shape, &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(padded.mask.clone(), shape, &Device::Cpu).unwrap();
    let logits = model.forward(&ids, &mask, false).unwrap();
    // Attack the predicted class, so every example starts "correct" and is flipped.
    let labels = logits.argmax(1).unwrap().to_dtype(DType::U32).unwrap();
    let forward = |e: &Tensor| model.forward_embeddings(e, &mask, false);
    let table = model.embedding_table().unwrap();
    let out = attack::hotflip(
        forward,
        &table,
        &ids,
        &mask,
        &labels,
        &HotFlipOptions {
            flips: 3,
            allowed: allowed.clone(),
        },
    )
    .unwrap();
    let after = out.ids.to_vec2::<u32>().unwrap();
    let before = ids.to_vec2::<u32>().unwrap();
    let mut changed = 0;
    for (b, (old, new)) in before.iter().zip(&after).enumerate() {
        let made = old.iter().zip(new).filter(|(x, y)| x != y).count();
        assert_eq!(made, out.flips[b]);
        assert!(made <= 3);
        changed += made;
        for (t, (&o, &n)) in old.iter().zip(new).enumerate() {
            if !allowed[o as usize] {
                assert_eq!(o, n, "special/pad id {o} at ({b},{t}) replaced by {n}");
            }
            if o != n {
                assert!(allowed[n as usize], "inserted special id {n} at ({b},{t})");
            }
        }
    }
    assert!(changed > 0, "hotflip flipped nothing");
}

#[test]
fn bad_flags_and_runs_exit_2_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let missing = dir.join("no-such-run");
    let m = missing.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--run", m, "--method", "fgsm", "--eps", "abc"], "--eps"),
        (
            &["--run", m, "--method", "fgsm", "--eps", "0.1,-1"],
            "--eps",
        ),
        (&["--run", m, "--method", "pgd", "--eps", "nan"], "--eps"),
        (
            &["--run", m, "--method", "hotflip", "--flips", "1.5"],
            "--flips",
        ),
        (
            &["--run", m, "--method", "hotflip", "--eps", "0.1"],
            "--eps",
        ),
        (&["--run", m, "--method", "fgsm", "--steps", "3"], "--steps"),
        (&["--run", m, "--method", "pgd", "--steps", "0"], "--steps"),
        (&["--run", m, "--method", "deepfool"], "deepfool"),
        (&["--run", m, "--method", "fgsm"], "no-such-run"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["attack"];
        all.extend_from_slice(args);
        let o = cotext(dir, &all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{args:?} should name {needle}: {}",
            text(&o)
        );
    }
}

/// `compare --attack`: per-objective mean ± std of the runs' own attack results,
/// in `summary.json` and `report.md`, and `robustness.png`; cached per run.
#[test]
fn compare_attack_adds_robustness_columns() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\ndataset = \"sst5\"\ndata_dir = {data:?}\nmax_len = 24\ntrain_limit = 160\neval_limit = 48\n\n\
             [model]\nkind = \"bilstm\"\nembed_dim = 16\nhidden = 16\n\n\
             [train]\nbatch_size = 16\nmax_steps = 6\neval_every = 3\n"
        ),
    )
    .unwrap();
    let args = [
        "compare",
        "-q",
        "--config",
        cfg.to_str().unwrap(),
        "--objectives",
        "ce,cot",
        "--seeds",
        "2",
        "--out",
        "cmp",
        "--attack",
        "fgsm:0,0.2",
        "--attack",
        "hotflip:1",
    ];
    let o = cotext(dir, &args);
    assert!(o.status.success(), "{}", text(&o));
    let out = dir.join("cmp");
    assert!(std::fs::metadata(out.join("robustness.png")).unwrap().len() > 1000);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("## Robustness")
            && report.contains("| fgsm 0.2 |")
            && report.contains("hotflip 1"),
        "{report}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let objectives = summary["robustness"]["objectives"].as_array().unwrap();
    assert_eq!(objectives.len(), 2);
    for (o, name) in objectives.iter().zip(["ce", "cot"]) {
        assert_eq!(o["objective"], name);
        // The mean over seeds of each run's own numbers.
        let per_run: Vec<serde_json::Value> = (1..=2)
            .map(|s| {
                serde_json::from_slice(
                    &std::fs::read(out.join(format!("{name}-seed{s}/attack-fgsm.json"))).unwrap(),
                )
                .unwrap()
            })
            .collect();
        let mean = (per_run[0]["attacks"][1]["accuracy"].as_f64().unwrap()
            + per_run[1]["attacks"][1]["accuracy"].as_f64().unwrap())
            / 2.0;
        let got = o["attacks"][1]["accuracy"]["mean"].as_f64().unwrap();
        assert!((got - mean).abs() < 1e-12, "{got} vs {mean}");
        assert_eq!(o["attacks"][1]["accuracy"]["n"], 2);
        // ε = 0 is the clean accuracy.
        assert_eq!(
            o["attacks"][0]["accuracy"]["mean"],
            o["clean"]["accuracy"]["mean"]
        );
    }
    // cot against ce: the difference of the means, with Welch's p-value.
    let (ce, cot) = (&objectives[0], &objectives[1]);
    assert!(ce["attacks"][1].get("against_ce").is_none());
    let w = &cot["attacks"][1]["against_ce"];
    let diff = cot["attacks"][1]["accuracy"]["mean"].as_f64().unwrap()
        - ce["attacks"][1]["accuracy"]["mean"].as_f64().unwrap();
    assert!((w["diff"].as_f64().unwrap() - diff).abs() < 1e-12, "{w}");
    let p = w["p"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{w}");
    assert!(
        report.contains("Against ce: the difference of the mean accuracies"),
        "{report}"
    );
    assert!(
        report.contains(&format!("{:+.4} (p {p:.3})", w["diff"].as_f64().unwrap())),
        "{report}"
    );
    // A second call reuses the cached results, untouched.
    let cached = std::fs::read(out.join("ce-seed1/attack-hotflip.json")).unwrap();
    let modified = std::fs::metadata(out.join("ce-seed1/attack-hotflip.json"))
        .unwrap()
        .modified()
        .unwrap();
    let o = cotext(dir, &args);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(out.join("ce-seed1/attack-hotflip.json")).unwrap(),
        cached
    );
    assert_eq!(
        std::fs::metadata(out.join("ce-seed1/attack-hotflip.json"))
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );
    // A bad spec fails before anything is trained.
    for bad in ["fgsm", "deepfool:0.1", "fgsm:x", "hotflip:0.5"] {
        let o = cotext(
            dir,
            &[
                "compare",
                "--config",
                cfg.to_str().unwrap(),
                "--out",
                "cmp2",
                "--attack",
                bad,
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--attack"),
            "{bad}: {}",
            text(&o)
        );
        assert!(!dir.join("cmp2").exists());
    }
}
