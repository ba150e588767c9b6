//! Translation models and decoding: configs, gradient coverage, incremental decoding
//! against teacher forcing, padding invariance, beam search invariants, and a tiny
//! reversal task each model must learn.

mod models_support;

use candle_core::{DType, Device, Result, Tensor, Var};
use cotext::decode::{beam_search, greedy, translate, translate_all, DecodeOptions};
use cotext::loss::{cross_entropy, projected_token_loss, CrossEntropyOptions, ProjectedLoss};
use cotext::models::{
    AttentionScore, LstmSeq2SeqConfig, Seq2Seq, Seq2SeqConfig, TransformerSeq2SeqConfig,
};
use cotext::rng::SplitMix64;
use cotext::train::{Optimizer, OptimizerConfig};
use models_support::{assert_all_trained, grad_norms, max_abs_diff};

const PAD: u32 = 0;
const BOS: u32 = 1;
const EOS: u32 = 2;

fn lstm(attention: AttentionScore, tie: bool) -> Seq2SeqConfig {
    Seq2SeqConfig::Lstm(LstmSeq2SeqConfig {
        embed_dim: 6,
        hidden: if tie { 6 } else { 8 },
        layers: 2,
        dropout: 0.2,
        attention,
        tie_embeddings: tie,
    })
}

fn transformer(tie: bool) -> Seq2SeqConfig {
    Seq2SeqConfig::Transformer(TransformerSeq2SeqConfig {
        d_model: 8,
        heads: 2,
        encoder_layers: 2,
        decoder_layers: 2,
        ffn_dim: 16,
        dropout: 0.1,
        max_len: 32,
        tie_embeddings: tie,
        ..TransformerSeq2SeqConfig::default()
    })
}

fn all_configs() -> Vec<(&'static str, Seq2SeqConfig)> {
    vec![
        ("lstm general", lstm(AttentionScore::General, false)),
        (
            "lstm scaled_dot tied",
            lstm(AttentionScore::ScaledDot, true),
        ),
        ("transformer tied", transformer(true)),
        ("transformer untied", transformer(false)),
    ]
}

/// Rows of random ids in `3..vocab` of the given lengths, padded with PAD to the
/// longest (or to `width`), and the mask.
fn ids(vocab: u32, lens: &[usize], width: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let mut g = SplitMix64::new(seed);
    let t = width.max(lens.iter().copied().max().unwrap_or(0));
    let (mut v, mut m) = (Vec::new(), Vec::new());
    for &l in lens {
        for i in 0..t {
            if i < l {
                v.push(3 + (g.next_u64() % (vocab as u64 - 3)) as u32);
                m.push(1u32);
            } else {
                v.push(PAD);
                m.push(0);
            }
        }
    }
    let dev = Device::Cpu;
    Ok((
        Tensor::from_vec(v, (lens.len(), t), &dev)?,
        Tensor::from_vec(m, (lens.len(), t), &dev)?,
    ))
}

#[test]
fn configs_parse_with_defaults_and_reject_bad_keys() {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        model: Seq2SeqConfig,
    }
    let parse = |s: &str| toml::from_str::<File>(s).map(|f| f.model);
    assert_eq!(
        parse("[model]\nkind = \"lstm\"\n").unwrap(),
        Seq2SeqConfig::Lstm(LstmSeq2SeqConfig::default())
    );
    let d = LstmSeq2SeqConfig::default();
    assert_eq!(
        (
            d.embed_dim,
            d.hidden,
            d.layers,
            d.dropout,
            d.attention,
            d.tie_embeddings
        ),
        (256, 256, 2, 0.2, AttentionScore::General, false)
    );
    let t = TransformerSeq2SeqConfig::default();
    assert_eq!(
        (
            t.d_model,
            t.heads,
            t.encoder_layers,
            t.decoder_layers,
            t.ffn_dim,
            t.max_len
        ),
        (256, 4, 3, 3, 1024, 256)
    );
    assert_eq!((t.dropout, t.tie_embeddings), (0.1, true));
    assert_eq!(
        parse("[model]\nkind = \"lstm\"\nattention = \"scaled_dot\"\n").unwrap(),
        Seq2SeqConfig::Lstm(LstmSeq2SeqConfig {
            attention: AttentionScore::ScaledDot,
            ..LstmSeq2SeqConfig::default()
        })
    );
    let e = parse("[model]\nkind = \"transformer\"\nlayers = 3\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("layers"), "{e}");
    let e = parse("[model]\nkind = \"lstm\"\nattention = \"bahdanau\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bahdanau"), "{e}");

    let build_err = |c: Seq2SeqConfig| {
        c.build(20, PAD, DType::F32, &Device::Cpu, 0)
            .unwrap_err()
            .to_string()
    };
    let e = build_err(Seq2SeqConfig::Lstm(LstmSeq2SeqConfig {
        tie_embeddings: true,
        embed_dim: 8,
        hidden: 6,
        ..LstmSeq2SeqConfig::default()
    }));
    assert!(e.contains("model.tie_embeddings"), "{e}");
    let e = build_err(Seq2SeqConfig::Lstm(LstmSeq2SeqConfig {
        hidden: 7,
        ..LstmSeq2SeqConfig::default()
    }));
    assert!(e.contains("model.hidden"), "{e}");
    let e = build_err(Seq2SeqConfig::Transformer(TransformerSeq2SeqConfig {
        heads: 3,
        ..TransformerSeq2SeqConfig::default()
    }));
    assert!(e.contains("model.heads"), "{e}");
    let e = build_err(Seq2SeqConfig::Transformer(TransformerSeq2SeqConfig {
        dropout: 1.0,
        ..TransformerSeq2SeqConfig::default()
    }));
    assert!(e.contains("model.dropout"), "{e}");
}

/// Every variable of every model receives a non-zero gradient from a CE loss on the
/// teacher-forced logits (catches candle's silent no-gradient ops).
#[test]
fn every_variable_gets_a_gradient_and_shapes_are_right() -> Result<()> {
    let vocab = 20;
    for (what, cfg) in all_configs() {
        let model = cfg.build(vocab, PAD, DType::F32, &Device::Cpu, 7).unwrap();
        let (src, mask) = ids(vocab as u32, &[5, 2, 4], 0, 1)?;
        let (tgt, _) = ids(vocab as u32, &[4, 6, 1], 0, 2)?;
        let logits = model.forward(&src, &mask, &tgt, true)?;
        assert_eq!(logits.dims(), &[3, 6, vocab], "{what}");
        let loss = cross_entropy(
            &logits,
            &tgt,
            &CrossEntropyOptions::default().with_ignore_index(PAD),
        )?;
        let norms = grad_norms(model.varmap(), &loss)?;
        assert!(norms.len() > 10, "{what}: {} variables", norms.len());
        assert_all_trained(what, &norms);
        let eval = model.forward(&src, &mask, &tgt, false)?;
        assert!(!eval.track_op(), "{what}: eval logits carry a graph");
    }
    Ok(())
}

/// `forward_hidden` + `output_layer` through the chunked projected loss gives the
/// cross-entropy of `forward`'s logits, and still trains every variable.
#[test]
fn hidden_states_with_the_projected_loss_match_the_logits() -> Result<()> {
    let vocab = 20;
    let ce = CrossEntropyOptions::default().with_ignore_index(PAD);
    for (what, cfg) in all_configs() {
        let model = cfg.build(vocab, PAD, DType::F32, &Device::Cpu, 17).unwrap();
        let (src, mask) = ids(vocab as u32, &[5, 2, 4], 0, 1)?;
        let (tgt, _) = ids(vocab as u32, &[4, 6, 1], 0, 2)?;
        let (w, b) = model.output_layer();
        assert_eq!(w.dims()[0], vocab);
        let projected = |train: bool| -> Result<Tensor> {
            let h = model.forward_hidden(&src, &mask, &tgt, train)?;
            projected_token_loss(
                &h,
                &w,
                b.as_ref(),
                &tgt,
                &ProjectedLoss::CrossEntropy(ce),
                5,
            )?
            .mean()
        };
        let plain = cross_entropy(&model.forward(&src, &mask, &tgt, false)?, &tgt, &ce)?;
        let d = max_abs_diff(&projected(false)?, &plain)?;
        assert!(d < 1e-5, "{what}: projected loss differs by {d}");
        assert_all_trained(what, &grad_norms(model.varmap(), &projected(true)?)?);
    }
    Ok(())
}

/// `start` + repeated `step` gives the teacher-forced logits position by position.
#[test]
fn incremental_decoding_equals_teacher_forcing() -> Result<()> {
    let vocab = 20;
    for (what, cfg) in all_configs() {
        let model = cfg.build(vocab, PAD, DType::F32, &Device::Cpu, 3).unwrap();
        let (src, mask) = ids(vocab as u32, &[5, 2, 4], 0, 4)?;
        let (y, _) = ids(vocab as u32, &[6, 6, 6], 0, 5)?;
        let bos = Tensor::full(BOS, (3, 1), &Device::Cpu)?;
        let tgt_in = Tensor::cat(&[&bos, &y.narrow(1, 0, 5)?], 1)?;
        let full = model.forward(&src, &mask, &tgt_in, false)?;
        let enc = model.encode(&src, &mask)?;
        let mut state = model.start(&enc)?;
        for t in 0..6 {
            let (logits, next) = model.step(&enc, &state, &tgt_in.narrow(1, t, 1)?.squeeze(1)?)?;
            assert_eq!(logits.dims(), &[3, vocab]);
            let d = max_abs_diff(&logits, &full.narrow(1, t, 1)?.squeeze(1)?)?;
            assert!(d < 1e-4, "{what}: step {t} differs by {d}");
            state = next;
        }
        // Reordering rows of the encoder output and the state reorders the logits.
        let idx = Tensor::new(&[2u32, 0, 0], &Device::Cpu)?;
        let last = y.narrow(1, 5, 1)?.squeeze(1)?.contiguous()?;
        let (a, _) = model.step(
            &enc.select(&idx)?,
            &state.select(&idx)?,
            &last.index_select(&idx, 0)?,
        )?;
        let (b, _) = model.step(&enc, &state, &last)?;
        assert!(
            max_abs_diff(&a, &b.index_select(&idx, 0)?)? < 1e-6,
            "{what}: select"
        );
    }
    Ok(())
}

/// Extra padding after a source changes none of the logits.
#[test]
fn source_padding_does_not_change_the_logits() -> Result<()> {
    let vocab = 20;
    for (what, cfg) in all_configs() {
        let model = cfg.build(vocab, PAD, DType::F32, &Device::Cpu, 9).unwrap();
        let (src, mask) = ids(vocab as u32, &[4, 2], 0, 6)?;
        let (src_p, mask_p) = ids(vocab as u32, &[4, 2], 9, 6)?;
        let (tgt, _) = ids(vocab as u32, &[5, 5], 0, 7)?;
        let a = model.forward(&src, &mask, &tgt, false)?;
        let b = model.forward(&src_p, &mask_p, &tgt, false)?;
        let d = max_abs_diff(&a, &b)?;
        assert!(d < 1e-5, "{what}: padding changed the logits by {d}");
    }
    Ok(())
}

fn sources() -> Vec<Vec<u32>> {
    vec![
        vec![5, 6, 7, 8, 9, 10],
        vec![3],
        vec![11, 4, 4],
        vec![],
        vec![7, 8, 9, 3, 12, 13, 14, 15, 16],
    ]
}

/// Greedy = beam 1 (α = 0); batched results = one sentence at a time, so outputs
/// come back in input order; `translate` dispatches on the beam width.
#[test]
fn decoding_is_batch_independent_and_beam_one_is_greedy() -> cotext::Result<()> {
    let vocab = 20;
    for (what, cfg) in all_configs() {
        let model = cfg.build(vocab, PAD, DType::F32, &Device::Cpu, 13).unwrap();
        let src = sources();
        let mut opts = DecodeOptions::new(BOS, EOS, PAD);
        opts.max_len_a = 0.5;
        opts.max_len_b = 4;
        opts.beam = 1;
        opts.length_penalty = 0.0;
        let g = greedy(&model, &src, &opts)?;
        assert_eq!(beam_search(&model, &src, &opts)?, g, "{what}: beam 1");
        assert_eq!(translate(&model, &src, &opts)?, g, "{what}: translate");
        for (i, s) in src.iter().enumerate() {
            let limit = (0.5 * s.len() as f64) as usize + 4;
            assert!(g[i].len() <= limit, "{what}: {:?} over {limit}", g[i]);
            assert!(!g[i].contains(&EOS) && !g[i].contains(&BOS));
            assert_eq!(
                greedy(&model, &src[i..=i], &opts)?[0],
                g[i],
                "{what}: greedy row {i}"
            );
        }
        opts.beam = 3;
        opts.length_penalty = 0.6;
        let b = translate(&model, &src, &opts)?;
        assert_eq!(b.len(), src.len());
        assert_eq!(translate_all(&model, &src, &opts, 2)?, b, "{what}: chunked");
        for (i, out) in b.iter().enumerate() {
            let one = beam_search(&model, &src[i..=i], &opts)?;
            assert_eq!(&one[0], out, "{what}: beam row {i}");
        }
    }
    Ok(())
}

/// Sets the variable `name` of `model` to `f(its value)`.
fn set_var(model: &Seq2Seq, name: &str, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<()> {
    let data = model.varmap().data().lock().unwrap();
    let var: &Var = data
        .get(name)
        .unwrap_or_else(|| panic!("no variable {name}"));
    var.set(&f(var.as_tensor())?)
}

/// A model whose output layer favours one token regardless of its input emits it
/// until the length limit, or (favouring EOS) nothing.
#[test]
fn beam_search_returns_the_only_possible_output() -> cotext::Result<()> {
    let vocab = 12;
    let model = lstm(AttentionScore::General, false)
        .build(vocab, PAD, DType::F32, &Device::Cpu, 5)
        .unwrap();
    let favour = |tok: usize| {
        set_var(&model, "decoder.output.weight", |t| t.zeros_like())?;
        set_var(&model, "decoder.output.bias", |t| {
            let mut v = vec![0f32; t.elem_count()];
            v[tok] = 30.0;
            Tensor::from_vec(v, t.shape(), t.device())
        })
    };
    let src = vec![vec![3, 4, 5, 6], vec![7], vec![8, 9]];
    let mut opts = DecodeOptions::new(BOS, EOS, PAD);
    opts.beam = 4;
    favour(7)?;
    let out = translate(&model, &src, &opts)?;
    for (s, o) in src.iter().zip(&out) {
        let limit = (opts.max_len_a * s.len() as f64) as usize + opts.max_len_b;
        assert_eq!(o, &vec![7; limit]);
    }
    favour(EOS as usize)?;
    assert_eq!(translate(&model, &src, &opts)?, vec![Vec::<u32>::new(); 3]);
    opts.beam = 1;
    assert_eq!(translate(&model, &src, &opts)?, vec![Vec::<u32>::new(); 3]);
    Ok(())
}

#[test]
fn weights_round_trip_through_safetensors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vocab = 20;
    for (what, cfg) in all_configs() {
        let a = cfg.build(vocab, PAD, DType::F32, &Device::Cpu, 1).unwrap();
        let b = cfg.build(vocab, PAD, DType::F32, &Device::Cpu, 2).unwrap();
        let path = dir.path().join("m.safetensors");
        a.save(&path).unwrap();
        b.load_weights(&path).unwrap();
        let (src, mask) = ids(vocab as u32, &[3, 5], 0, 3)?;
        let (tgt, _) = ids(vocab as u32, &[4, 2], 0, 4)?;
        let la = a.forward(&src, &mask, &tgt, false)?;
        let lb = b.forward(&src, &mask, &tgt, false)?;
        assert_eq!(max_abs_diff(&la, &lb)?, 0.0, "{what}");
        assert_eq!(a.tensors().len(), a.varmap().all_vars().len());
    }
    Ok(())
}

/// The gradient of an attention weight (LSTM `W_a`, Transformer cross-attention
/// query) against central finite differences, in f64.
#[test]
fn attention_weight_gradient_matches_finite_differences() -> Result<()> {
    let vocab = 10;
    let cases = [
        (
            Seq2SeqConfig::Lstm(LstmSeq2SeqConfig {
                embed_dim: 4,
                hidden: 4,
                layers: 1,
                dropout: 0.0,
                ..LstmSeq2SeqConfig::default()
            }),
            "decoder.attention.weight",
        ),
        (
            Seq2SeqConfig::Transformer(TransformerSeq2SeqConfig {
                d_model: 4,
                heads: 2,
                encoder_layers: 1,
                decoder_layers: 1,
                ffn_dim: 8,
                dropout: 0.0,
                max_len: 8,
                ..TransformerSeq2SeqConfig::default()
            }),
            "decoder.layers.0.cross_attention.query.weight",
        ),
    ];
    for (cfg, name) in cases {
        let model = cfg.build(vocab, PAD, DType::F64, &Device::Cpu, 21).unwrap();
        let (src, mask) = ids(vocab as u32, &[4, 2], 0, 8)?;
        let (tgt, _) = ids(vocab as u32, &[3, 3], 0, 9)?;
        let up = {
            let mut g = SplitMix64::new(10);
            let v: Vec<f64> = (0..2 * 3 * vocab).map(|_| g.normal()).collect();
            Tensor::from_vec(v, (2, 3, vocab), &Device::Cpu)?
        };
        let loss =
            || -> Result<Tensor> { (model.forward(&src, &mask, &tgt, true)? * &up)?.sum_all() };
        let data = model.varmap().data().lock().unwrap().clone();
        let var = data.get(name).unwrap();
        let grads = loss()?.backward()?;
        let analytic = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f64>()?;
        let orig = var.as_tensor().copy()?;
        let v0 = orig.flatten_all()?.to_vec1::<f64>()?;
        let eps = 1e-6;
        for i in 0..v0.len() {
            let eval = |delta: f64| -> Result<f64> {
                let mut v = v0.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, orig.shape(), &Device::Cpu)?)?;
                loss()?.to_scalar::<f64>()
            };
            let num = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
            assert!(
                (analytic[i] - num).abs() <= 1e-6 * (1.0 + num.abs()),
                "{name}[{i}]: analytic {}, numeric {num}",
                analytic[i]
            );
        }
        var.set(&orig)?;
    }
    Ok(())
}

/// Reversal task: vocab 12 (0 pad, 1 BOS, 2 EOS), sources of 3..=6 tokens in 3..12,
/// target = the source reversed.
fn reversal_batch(g: &mut SplitMix64, n: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    (0..n)
        .map(|_| {
            let len = 3 + (g.next_u64() % 4) as usize;
            let s: Vec<u32> = (0..len).map(|_| 3 + (g.next_u64() % 9) as u32).collect();
            let t: Vec<u32> = s.iter().rev().copied().collect();
            (s, t)
        })
        .collect()
}

fn to_tensors(batch: &[(Vec<u32>, Vec<u32>)]) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let dev = Device::Cpu;
    let s = batch.iter().map(|b| b.0.len()).max().unwrap();
    let t = batch.iter().map(|b| b.1.len()).max().unwrap() + 1;
    let (mut src, mut mask, mut tin, mut tout) = (vec![], vec![], vec![], vec![]);
    for (x, y) in batch {
        for i in 0..s {
            src.push(*x.get(i).unwrap_or(&PAD));
            mask.push((i < x.len()) as u32);
        }
        let mut yi = vec![BOS];
        yi.extend(y);
        let mut yo = y.clone();
        yo.push(EOS);
        yi.resize(t, PAD);
        yo.resize(t, PAD);
        tin.extend(yi);
        tout.extend(yo);
    }
    let b = batch.len();
    Ok((
        Tensor::from_vec(src, (b, s), &dev)?,
        Tensor::from_vec(mask, (b, s), &dev)?,
        Tensor::from_vec(tin, (b, t), &dev)?,
        Tensor::from_vec(tout, (b, t), &dev)?,
    ))
}

/// Trains `cfg` on the reversal task and returns greedy token accuracy on held-out
/// sentences (matches at equal positions over reference tokens; extra output tokens
/// count as errors).
fn learn_reversal(cfg: &Seq2SeqConfig, steps: usize, lr: f64) -> cotext::Result<f64> {
    let vocab = 12;
    let model = cfg.build(vocab, PAD, DType::F32, &Device::Cpu, 42).unwrap();
    let vars: Vec<(String, Var)> = model
        .varmap()
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut opt = Optimizer::new(
        vars,
        OptimizerConfig::Adamw {
            lr,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?;
    let mut g = SplitMix64::new(1);
    let ce = CrossEntropyOptions::default().with_ignore_index(PAD);
    for _ in 0..steps {
        let (src, mask, tin, tout) = to_tensors(&reversal_batch(&mut g, 32))?;
        let logits = model.forward(&src, &mask, &tin, true)?;
        let loss = cross_entropy(&logits, &tout, &ce)?;
        opt.step(&loss.backward()?)?;
    }
    let test = reversal_batch(&mut SplitMix64::new(999), 64);
    let src: Vec<Vec<u32>> = test.iter().map(|b| b.0.clone()).collect();
    let mut opts = DecodeOptions::new(BOS, EOS, PAD);
    opts.beam = 1;
    let out = translate(&model, &src, &opts)?;
    let (mut good, mut total) = (0usize, 0usize);
    for ((_, y), o) in test.iter().zip(&out) {
        good += y.iter().zip(o).filter(|(a, b)| a == b).count();
        total += y.len().max(o.len());
    }
    // Beam search must do at least as well on a model this sure of itself.
    opts.beam = 3;
    let beam = translate(&model, &src, &opts)?;
    let beam_good: usize = test
        .iter()
        .zip(&beam)
        .map(|((_, y), o)| if y == o { 1 } else { 0 })
        .sum();
    let greedy_good: usize = test
        .iter()
        .zip(&out)
        .map(|((_, y), o)| if y == o { 1 } else { 0 })
        .sum();
    eprintln!(
        "reversal: token accuracy {good}/{total}, exact greedy {greedy_good}/64, exact beam {beam_good}/64"
    );
    assert!(
        beam_good + 3 >= greedy_good,
        "beam {beam_good} vs greedy {greedy_good}"
    );
    Ok(good as f64 / total as f64)
}

#[test]
fn lstm_learns_to_reverse() -> cotext::Result<()> {
    let cfg = Seq2SeqConfig::Lstm(LstmSeq2SeqConfig {
        embed_dim: 32,
        hidden: 64,
        layers: 1,
        dropout: 0.0,
        attention: AttentionScore::General,
        tie_embeddings: false,
    });
    let acc = learn_reversal(&cfg, 300, 1e-2)?;
    assert!(acc >= 0.9, "lstm reversal token accuracy {acc}");
    Ok(())
}

#[test]
fn transformer_learns_to_reverse() -> cotext::Result<()> {
    let cfg = Seq2SeqConfig::Transformer(TransformerSeq2SeqConfig {
        d_model: 32,
        heads: 2,
        encoder_layers: 2,
        decoder_layers: 2,
        ffn_dim: 64,
        dropout: 0.0,
        max_len: 16,
        ..TransformerSeq2SeqConfig::default()
    });
    // 400 updates: at 300, a change of the attention's rounding alone (scaling the
    // scores by 1 ± 1e-6) moved the token accuracy between 0.84 and 1.0; at 400 it
    // stays above 0.93 under the same changes.
    let acc = learn_reversal(&cfg, 400, 3e-3)?;
    assert!(acc >= 0.9, "transformer reversal token accuracy {acc}");
    Ok(())
}
