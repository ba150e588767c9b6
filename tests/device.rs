//! Runs on the device named by `COTEXT_TEST_DEVICE` (default `cpu`; `cuda` or
//! `cuda:N` with a `--features cuda` build on a GPU machine, see
//! `scripts/gpu-check.sh`), checked against the same computation on the host:
//! the token-level losses (the fused kernel and the plain path, f32/bf16/f16
//! logits, padding ignored), every model's training steps and decoding, and mixed
//! precision (bf16/f16 compute, f32 master weights), which runs on the CPU too.

mod models_support;

use candle_core::{DType, Device, Result, Tensor, Var};
use cotext::decode::{greedy, translate, DecodeOptions};
use cotext::loss::{self, ComplementOptions, CrossEntropyOptions, Form, LossSum};
use cotext::models::{
    AttentionScore, BertConfig, BiLstmConfig, LstmSeq2SeqConfig, ModelConfig, Seq2Seq,
    Seq2SeqConfig, TransformerConfig, TransformerSeq2SeqConfig,
};
use cotext::rng::SplitMix64;
use cotext::train::{LossConfig, Objective, OptimizerConfig, StepReport, Stepper};
use models_support::{assert_all_trained, grad_norms, max_abs_diff, write_tiny_bert};

const PAD: u32 = 0;
const BOS: u32 = 1;
const EOS: u32 = 2;

fn device() -> Device {
    let spec = std::env::var("COTEXT_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let dev = cotext::train::parse_device(&spec)
        .unwrap_or_else(|e| panic!("COTEXT_TEST_DEVICE: {e}"))
        .open()
        .unwrap_or_else(|e| panic!("COTEXT_TEST_DEVICE={spec}: {e}"));
    eprintln!("device tests on {spec}");
    dev
}

fn random(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let mut g = SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (scale * g.normal()) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn to_host_f32(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

type LossFn = fn(&Tensor, &Tensor) -> Result<LossSum>;

fn chunked_ce(z: &Tensor, t: &Tensor) -> Result<LossSum> {
    loss::chunked_cross_entropy_sum(
        z,
        t,
        &CrossEntropyOptions {
            ignore_index: Some(PAD),
            label_smoothing: 0.0,
        },
    )
}
fn chunked_ce_smooth(z: &Tensor, t: &Tensor) -> Result<LossSum> {
    loss::chunked_cross_entropy_sum(
        z,
        t,
        &CrossEntropyOptions {
            ignore_index: Some(PAD),
            label_smoothing: 0.1,
        },
    )
}
fn chunked_cot(z: &Tensor, t: &Tensor) -> Result<LossSum> {
    loss::chunked_complement_entropy_sum(
        z,
        t,
        &ComplementOptions {
            form: Form::Exact,
            ignore_index: Some(PAD),
            ..Default::default()
        },
    )
}
fn plain_ce(z: &Tensor, t: &Tensor) -> Result<LossSum> {
    loss::cross_entropy_sum(
        z,
        t,
        &CrossEntropyOptions {
            ignore_index: Some(PAD),
            label_smoothing: 0.1,
        },
    )
}
fn plain_cot(z: &Tensor, t: &Tensor) -> Result<LossSum> {
    loss::complement_entropy_sum(
        z,
        t,
        &ComplementOptions {
            form: Form::Exact,
            ignore_index: Some(PAD),
            ..Default::default()
        },
    )
}

/// Value (sum / count) and gradient of `f` at logits `z` (moved to `dev`).
fn value_and_grad(f: LossFn, z: &Tensor, t: &Tensor, dev: &Device) -> (f64, Tensor) {
    let z = Var::from_tensor(&z.to_device(dev).unwrap()).unwrap();
    let t = t.to_device(dev).unwrap();
    let l = f(z.as_tensor(), &t).unwrap();
    assert_eq!(l.sum.dtype(), DType::F32, "losses reduce in f32");
    let mean = l.mean().unwrap();
    let g = mean.backward().unwrap().get(z.as_tensor()).unwrap().clone();
    assert_eq!(
        g.dtype(),
        z.dtype(),
        "the gradient comes back in the logits' dtype"
    );
    (scalar(&mean), to_host_f32(&g))
}

/// The fused kernel (and the plain path) on the device against the host row kernel,
/// for f32/bf16/f16 logits over a 1000-word vocabulary with padding: values to 1e-5
/// relative, gradients to 1e-5 of their scale (plus the half type's rounding).
#[test]
fn token_losses_on_the_device_match_the_host() {
    let dev = device();
    let (b, t, v) = (3, 7, 1000);
    let mut g = SplitMix64::new(5);
    let targets: Vec<u32> = (0..b * t)
        .map(|i| {
            if i % t >= 5 - i / t {
                PAD
            } else {
                3 + (g.next_u64() % (v as u64 - 3)) as u32
            }
        })
        .collect();
    let targets = Tensor::from_vec(targets, (b, t), &Device::Cpu).unwrap();
    let logits = random(&[b, t, v], 6, 3.0);
    let cases: [(&str, LossFn, LossFn); 5] = [
        ("chunked ce", chunked_ce, chunked_ce),
        ("chunked ce smoothed", chunked_ce_smooth, chunked_ce_smooth),
        ("chunked cot", chunked_cot, chunked_cot),
        ("plain ce smoothed", plain_ce, chunked_ce_smooth),
        ("plain cot", plain_cot, chunked_cot),
    ];
    for dt in [DType::F32, DType::BF16, DType::F16] {
        // The reference sees exactly the values the device sees, widened to f32.
        let z = logits.to_dtype(dt).unwrap();
        let z_ref = z.to_dtype(DType::F32).unwrap();
        for (name, on_device, reference) in cases {
            let (want, g_want) = value_and_grad(reference, &z_ref, &targets, &Device::Cpu);
            let (got, g_got) = value_and_grad(on_device, &z, &targets, &dev);
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
                "{name} {dt:?}: {got} vs {want}"
            );
            // The stored gradient's rounding: relative, and f16's subnormal spacing.
            let (rounding, floor) = match dt {
                DType::BF16 => (2f64.powi(-8), 0.0),
                DType::F16 => (2f64.powi(-11), 2f64.powi(-24)),
                _ => (0.0, 0.0),
            };
            let scale = max_abs(&g_want);
            let diff = (&g_got - &g_want).unwrap().abs().unwrap();
            let allowed =
                ((g_want.abs().unwrap() * rounding).unwrap() + (1e-5 * scale + floor)).unwrap();
            let over = diff
                .gt(&allowed)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(
                over,
                0.0,
                "{name} {dt:?}: {over} gradient entries off (max diff {})",
                max_abs(&diff)
            );
            // Padded rows get exactly zero gradient.
            let pads = g_got.narrow(1, t - 1, 1).unwrap().narrow(0, 0, 1).unwrap();
            assert_eq!(max_abs(&pads), 0.0, "{name} {dt:?}: padding got a gradient");
        }
    }
}

fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    }
}

fn adamw(lr: f64) -> OptimizerConfig {
    OptimizerConfig::Adamw {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    }
}

fn vars_of(varmap: &candle_nn::VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Token ids in `3..vocab` for `lens`, padded, with the mask, on `dev`.
fn batch(vocab: u32, lens: &[usize], seed: u64, dev: &Device) -> (Tensor, Tensor) {
    let mut g = SplitMix64::new(seed);
    let w = *lens.iter().max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for &l in lens {
        for i in 0..w {
            ids.push(if i < l {
                3 + (g.next_u64() % (vocab as u64 - 3)) as u32
            } else {
                PAD
            });
            mask.push(u32::from(i < l));
        }
    }
    (
        Tensor::from_vec(ids, (lens.len(), w), dev).unwrap(),
        Tensor::from_vec(mask, (lens.len(), w), dev).unwrap(),
    )
}

fn classifiers(dir: &std::path::Path) -> Vec<(&'static str, ModelConfig)> {
    vec![
        (
            "bilstm",
            ModelConfig::Bilstm(BiLstmConfig {
                embed_dim: 8,
                hidden: 6,
                layers: 2,
                dropout: 0.1,
                ..Default::default()
            }),
        ),
        (
            "transformer",
            ModelConfig::Transformer(TransformerConfig {
                d_model: 8,
                heads: 2,
                layers: 2,
                ffn_dim: 16,
                max_len: 16,
                ..Default::default()
            }),
        ),
        ("bert", ModelConfig::Bert(BertConfig::new(dir))),
    ]
}

fn translators() -> Vec<(&'static str, Seq2SeqConfig)> {
    vec![
        (
            "lstm",
            Seq2SeqConfig::Lstm(LstmSeq2SeqConfig {
                embed_dim: 6,
                hidden: 8,
                layers: 2,
                dropout: 0.1,
                attention: AttentionScore::General,
                tie_embeddings: false,
            }),
        ),
        (
            "transformer",
            Seq2SeqConfig::Transformer(TransformerSeq2SeqConfig {
                d_model: 8,
                heads: 2,
                encoder_layers: 2,
                decoder_layers: 2,
                ffn_dim: 16,
                dropout: 0.1,
                max_len: 32,
                tie_embeddings: true,
                ..Default::default()
            }),
        ),
    ]
}

fn assert_reports_close(what: &str, a: &[StepReport], b: &[StepReport]) {
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x.loss - y.loss).abs() <= 1e-4 * y.loss.abs().max(1.0),
            "{what}: loss {} vs {}",
            x.loss,
            y.loss
        );
        match (x.complement, y.complement) {
            (Some(p), Some(q)) => assert!(
                (p - q).abs() <= 1e-4 * q.abs().max(1.0),
                "{what}: complement {p} vs {q}"
            ),
            (p, q) => assert_eq!(p.is_some(), q.is_some(), "{what}"),
        }
    }
}

fn assert_weights_close(what: &str, a: &candle_nn::VarMap, b: &candle_nn::VarMap) {
    for ((name, x), (_, y)) in vars_of(a).iter().zip(vars_of(b)) {
        let d = max_abs_diff(&to_host_f32(x.as_tensor()), &to_host_f32(y.as_tensor())).unwrap();
        assert!(
            d < 1e-4,
            "{what}: {name} differs by {d} after training on the device"
        );
    }
}

/// Three COT steps (each a CE and a complement update) of every classifier on the
/// device give the host's losses and weights (the dropout masks come from the same
/// seeded host stream on every device).
#[test]
fn classifiers_train_on_the_device_like_on_the_host() {
    let dev = device();
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), false, 4).unwrap();
    for (name, cfg) in classifiers(dir.path()) {
        let mut runs = Vec::new();
        for d in [Device::Cpu, dev.clone()] {
            let model = cfg.build(40, 5, DType::F32, &d, 7).unwrap();
            let mut stepper = Stepper::new(
                Objective::Cot,
                LossConfig {
                    chunked: true,
                    ..Default::default()
                },
                vars_of(model.varmap()),
                sgd(),
            )
            .unwrap();
            let mut reports = Vec::new();
            for s in 0..3 {
                let (ids, mask) = batch(40, &[5, 3, 4, 2], 10 + s, &d);
                let labels = Tensor::new(&[0u32, 3, 1, 4], &d).unwrap();
                let r = stepper
                    .step(&[((ids, mask), labels)], |(i, m)| model.forward(i, m, true))
                    .unwrap()
                    .unwrap();
                reports.push(r);
            }
            let (ids, mask) = batch(40, &[5, 3], 99, &d);
            let eval = to_host_f32(&model.forward(&ids, &mask, false).unwrap());
            runs.push((model, reports, eval));
        }
        assert_reports_close(name, &runs[1].1, &runs[0].1);
        assert_weights_close(name, runs[1].0.varmap(), runs[0].0.varmap());
        assert!(
            max_abs_diff(&runs[1].2, &runs[0].2).unwrap() < 1e-4,
            "{name}: evaluation logits"
        );
    }
}

fn pairs(vocab: u32, seed: u64, dev: &Device) -> ((Tensor, Tensor, Tensor), Tensor) {
    let (src, mask) = batch(vocab, &[6, 4, 5], seed, dev);
    let (tgt, tmask) = batch(vocab, &[5, 3, 6], seed + 1, dev);
    // tgt_in = BOS + tgt[..T-1]; targets = tgt with EOS after the last real token.
    let tgt_h: Vec<Vec<u32>> = tgt.to_vec2().unwrap();
    let lens: Vec<u32> = tmask.sum(1).unwrap().to_vec1().unwrap();
    let w = tgt_h[0].len() + 1;
    let mut tin = Vec::new();
    let mut tout = Vec::new();
    for (row, &l) in tgt_h.iter().zip(&lens) {
        let l = l as usize;
        for i in 0..w {
            tin.push(if i == 0 {
                BOS
            } else if i <= l {
                row[i - 1]
            } else {
                PAD
            });
            tout.push(if i < l {
                row[i]
            } else if i == l {
                EOS
            } else {
                PAD
            });
        }
    }
    let tin = Tensor::from_vec(tin, (3, w), dev).unwrap();
    let tout = Tensor::from_vec(tout, (3, w), dev).unwrap();
    ((src, mask, tin), tout)
}

fn token_losses() -> LossConfig {
    LossConfig {
        cross_entropy: CrossEntropyOptions {
            ignore_index: Some(PAD),
            label_smoothing: 0.1,
        },
        complement: ComplementOptions {
            ignore_index: Some(PAD),
            ..Default::default()
        },
        chunked: true,
        ..Default::default()
    }
}

fn decode_options(beam: usize) -> DecodeOptions {
    DecodeOptions {
        beam,
        max_len_a: 1.0,
        max_len_b: 4,
        length_penalty: 1.0,
        bos: BOS,
        eos: EOS,
        pad: PAD,
    }
}

/// Three COT steps of each translation model on the device (token-level losses with
/// padding, the fused kernel on CUDA) give the host's losses and weights; greedy and
/// beam decoding run there and agree with the host.
#[test]
fn translators_train_and_decode_on_the_device_like_on_the_host() {
    let dev = device();
    let vocab = 30;
    each_case(translators(), |name, cfg| {
        let mut runs: Vec<(Seq2Seq, Vec<StepReport>)> = Vec::new();
        for d in [Device::Cpu, dev.clone()] {
            let model = cfg.build(vocab, PAD, DType::F32, &d, 3).unwrap();
            let mut stepper = Stepper::new(
                Objective::Cot,
                token_losses(),
                vars_of(&model_varmap(&model)),
                adamw(1e-2),
            )
            .unwrap();
            let mut reports = Vec::new();
            for s in 0..3 {
                let (input, targets) = pairs(vocab as u32, 20 + 2 * s, &d);
                let r = stepper
                    .step(&[(input, targets)], |(src, mask, tin)| {
                        model.forward(src, mask, tin, true)
                    })
                    .unwrap()
                    .unwrap();
                reports.push(r);
            }
            runs.push((model, reports));
        }
        assert_reports_close(name, &runs[1].1, &runs[0].1);
        assert_weights_close(name, &model_varmap(&runs[1].0), &model_varmap(&runs[0].0));
        let src: Vec<Vec<u32>> = (0..4)
            .map(|i| {
                (0..3 + i)
                    .map(|j| 3 + ((i * 7 + j * 5) % 27) as u32)
                    .collect()
            })
            .collect();
        let host = greedy(&runs[0].0, &src, &decode_options(1)).unwrap();
        let on_dev = greedy(&runs[1].0, &src, &decode_options(1)).unwrap();
        assert_eq!(host, on_dev, "{name}: greedy decoding");
        let beams = translate(&runs[1].0, &src, &decode_options(3)).unwrap();
        assert_eq!(beams.len(), src.len());
        assert!(
            beams.iter().flatten().all(|&t| (t as usize) < vocab),
            "{name}: beam search ids"
        );
    });
}

/// Runs `body` on every named case, then fails naming each case that panicked:
/// one model failing on a device does not hide whether the others pass (each
/// panic's message is printed as it happens).
fn each_case<T>(cases: Vec<(&'static str, T)>, mut body: impl FnMut(&'static str, T)) {
    let mut failed = Vec::new();
    for (name, case) in cases {
        let run = std::panic::AssertUnwindSafe(|| body(name, case));
        if std::panic::catch_unwind(run).is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

fn model_varmap(m: &Seq2Seq) -> candle_nn::VarMap {
    m.varmap().clone()
}

/// bf16 and f16 compute: the variables and the optimizer state stay f32, logits
/// come out f32, every variable gets a gradient, a tiny classifier learns, and the
/// translators' loss curves follow the f32 ones.
#[test]
fn mixed_precision_trains_with_f32_master_weights() {
    let dev = device();
    for compute in [DType::BF16, DType::F16] {
        let cfg = ModelConfig::Transformer(TransformerConfig {
            d_model: 16,
            heads: 2,
            layers: 1,
            ffn_dim: 32,
            max_len: 16,
            dropout: 0.0,
            attention_dropout: 0.0,
            ..Default::default()
        });
        let model = cfg
            .build_mixed(20, 3, DType::F32, compute, &dev, 1)
            .unwrap();
        // The label is the class of the first token: learnable in a few dozen steps.
        let (ids, mask) = batch(20, &[6, 5, 6, 4, 6, 3, 5, 6], 2, &dev);
        let first: Vec<u32> = ids
            .narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let labels = Tensor::from_vec(
            first.iter().map(|&t| t % 3).collect::<Vec<u32>>(),
            first.len(),
            &dev,
        )
        .unwrap();
        let logits = model.forward(&ids, &mask, true).unwrap();
        assert_eq!(logits.dtype(), DType::F32, "{compute:?}: logits");
        let norms = grad_norms(
            model.varmap(),
            &loss::cross_entropy(&logits, &labels, &Default::default()).unwrap(),
        )
        .unwrap();
        assert_all_trained(&format!("transformer {compute:?}"), &norms);
        let mut stepper = Stepper::new(
            Objective::Cot,
            LossConfig::default(),
            vars_of(model.varmap()),
            adamw(1e-2),
        )
        .unwrap();
        let mut losses = Vec::new();
        for _ in 0..40 {
            let r = stepper
                .step(
                    &[((ids.clone(), mask.clone()), labels.clone())],
                    |(i, m)| model.forward(i, m, true),
                )
                .unwrap()
                .unwrap();
            losses.push(r.loss);
        }
        assert!(
            losses[39] < 0.5 * losses[0],
            "{compute:?}: loss {} → {}",
            losses[0],
            losses[39]
        );
        for (name, v) in vars_of(model.varmap()) {
            assert_eq!(v.dtype(), DType::F32, "{compute:?}: {name}");
        }
        for (name, t) in stepper.state_tensors().unwrap() {
            assert!(
                !t.dtype().is_float() || t.dtype() == DType::F32 || t.dtype() == DType::F64,
                "{compute:?}: optimizer state {name} is {:?}",
                t.dtype()
            );
        }

        each_case(translators(), |name, cfg| {
            // The same 30 updates in f32 and in the compute dtype: the curves agree.
            let mut curves = Vec::new();
            for dt in [DType::F32, compute] {
                let model = cfg.build_mixed(30, PAD, DType::F32, dt, &dev, 5).unwrap();
                let mut stepper = Stepper::new(
                    Objective::CrossEntropy,
                    token_losses(),
                    vars_of(&model_varmap(&model)),
                    adamw(1e-2),
                )
                .unwrap();
                let (input, targets) = pairs(30, 40, &dev);
                let mut losses = Vec::new();
                for _ in 0..30 {
                    let r = stepper
                        .step(&[(input.clone(), targets.clone())], |(s, m, t)| {
                            model.forward(s, m, t, true)
                        })
                        .unwrap()
                        .unwrap();
                    losses.push(r.loss);
                }
                assert!(
                    losses.iter().all(|l| l.is_finite()),
                    "{name} {dt:?}: {losses:?}"
                );
                assert!(
                    losses[29] < 0.85 * losses[0],
                    "{name} {dt:?}: loss {} → {}",
                    losses[0],
                    losses[29]
                );
                let out = greedy(&model, &[vec![3, 4, 5]], &decode_options(1)).unwrap();
                assert_eq!(out.len(), 1);
                curves.push(losses);
            }
            let (full, half) = (&curves[0], &curves[1]);
            assert!(
                (full[29] - half[29]).abs() < 0.1 * full[0],
                "{name} {compute:?}: final loss {} (f32: {})",
                half[29],
                full[29]
            );
        });
    }
}

/// `precision = "f32"` is the plain model: the same logits and the same weights
/// after training, bit for bit.
#[test]
fn f32_precision_is_bit_identical_to_the_unmixed_model() {
    let dev = device();
    let cfg = ModelConfig::Transformer(TransformerConfig {
        d_model: 8,
        heads: 2,
        layers: 1,
        ffn_dim: 16,
        max_len: 16,
        ..Default::default()
    });
    let a = cfg.build(20, 3, DType::F32, &dev, 9).unwrap();
    let b = cfg
        .build_mixed(20, 3, DType::F32, DType::F32, &dev, 9)
        .unwrap();
    let (ids, mask) = batch(20, &[5, 3], 1, &dev);
    let labels = Tensor::new(&[0u32, 2], &dev).unwrap();
    for m in [&a, &b] {
        let mut s = Stepper::new(
            Objective::Cot,
            LossConfig::default(),
            vars_of(m.varmap()),
            sgd(),
        )
        .unwrap();
        for _ in 0..2 {
            s.step(
                &[((ids.clone(), mask.clone()), labels.clone())],
                |(i, k)| m.forward(i, k, true),
            )
            .unwrap()
            .unwrap();
        }
    }
    for ((name, x), (_, y)) in vars_of(a.varmap()).iter().zip(vars_of(b.varmap())) {
        assert_eq!(
            max_abs_diff(x.as_tensor(), y.as_tensor()).unwrap(),
            0.0,
            "{name}"
        );
    }
}
