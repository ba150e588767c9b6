//! Training-update throughput of cotext's real models: exactly what `cotext train`
//! runs per update (the shipped config's model and `[train]` settings, one
//! [`Stepper::step`]; for `cot`, Algorithm 1: a CE update with optimizer A, a second
//! forward pass and a complement update with optimizer B), on a fixed batch of
//! synthetic token ids of realistic shapes.
//!
//! One case per process, so that each peak RSS is its own:
//!
//! ```text
//! cargo bench --bench train_step -- --workload bilstm-sst5 --objective cot --steps 20 --warmup 3
//! cargo bench --bench train_step -- --list
//! ```
//!
//! prints one JSON line (tokens/s, ms/update, peak RSS). `benches/vs_torch.sh` runs
//! every workload × objective here and in `benches/torch_ref.py` (the same models in
//! PyTorch eager, the same synthetic batch) and prints the comparison table.
//!
//! On a GPU (a `--features cuda` build; `scripts/gpu-check.sh` runs this):
//!
//! ```text
//! train_step --workload transformer-multi30k --objective cot --device cuda --precision bf16
//! train_step --workload minilm-sst2 --device cuda --random-init      # needs only config.json
//! train_step --workload loss --objective cot --device cuda --chunked false --rows 4096 --vocab 32000
//! ```
//!
//! `--chunked true|false` overrides `train.chunked_loss` (on CUDA: the fused loss
//! kernel or the plain path); `--set KEY=VALUE` (repeatable) overrides any other
//! key of the workload's config, as `cotext train --set` does (e.g.
//! `--set model.dropout=0`: how much of an update dropout costs); `--random-init`
//! gives MiniLM random weights of the checkpoint's shapes (speed does not depend on the values), so only its
//! `config.json` is needed; the `loss` workload times one token-level loss forward
//! and backward on random logits `[rows, vocab]` in the precision's dtype.
//!
//! The batch comes from [`SplitMix64`] with a fixed seed, drawn in an order that
//! `torch_ref.py` repeats (see [`Batch::synthetic`]), so both sides train on the
//! same ids, lengths and labels. Threads: candle reads `RAYON_NUM_THREADS` /
//! `CANDLE_NUM_THREADS`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use cotext::loss::{self, ComplementOptions, CrossEntropyOptions, Normalization};
use cotext::models::{Bert, HfBertConfig, Model, Params, Seq2Seq, SharedRng};
use cotext::rng::SplitMix64;
use cotext::train::{
    parse_device, Head, LossConfig, Objective, OptimizerConfig, Precision, RunConfig, Stepper,
};

/// Seed of the synthetic batch (`torch_ref.py` uses the same).
const DATA_SEED: u64 = 20_261_127;
/// Padding id of every workload; translation also reserves BOS = 1 and EOS = 2.
const PAD: u32 = 0;
const BOS: u32 = 1;
const EOS: u32 = 2;
/// The benchmark's learning rate (every workload, both sides).
const LR: f64 = 1e-4;

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// `batch` sentences of up to `len` tokens, `classes` labels.
    Classify {
        vocab: usize,
        classes: usize,
        batch: usize,
        len: usize,
    },
    /// `batch` pairs of up to `src` source and `tgt` target tokens.
    Translate {
        vocab: usize,
        batch: usize,
        src: usize,
        tgt: usize,
    },
}

struct Workload {
    name: &'static str,
    /// The shipped config whose `[model]` and `[train]` tables are used.
    config: &'static str,
    shape: Shape,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "bilstm-sst5",
        config: "configs/sst5-bilstm.toml",
        shape: Shape::Classify {
            vocab: 16000,
            classes: 5,
            batch: 32,
            len: 40,
        },
    },
    // The IMDB rating config's encoder (d 256, 4 heads, 2 layers, ffn 512) on
    // SST-5-sized inputs.
    Workload {
        name: "transformer-sst5",
        config: "configs/imdb-rating-transformer.toml",
        shape: Shape::Classify {
            vocab: 16000,
            classes: 5,
            batch: 32,
            len: 40,
        },
    },
    Workload {
        name: "minilm-sst2",
        config: "configs/sst2-minilm.toml",
        shape: Shape::Classify {
            vocab: 30522,
            classes: 2,
            batch: 32,
            len: 40,
        },
    },
    Workload {
        name: "lstm-multi30k",
        config: "configs/multi30k-de-en-lstm.toml",
        shape: Shape::Translate {
            vocab: 8000,
            batch: 64,
            src: 30,
            tgt: 30,
        },
    },
    Workload {
        name: "transformer-multi30k",
        config: "configs/multi30k-de-en-transformer.toml",
        shape: Shape::Translate {
            vocab: 8000,
            batch: 64,
            src: 30,
            tgt: 30,
        },
    },
];

struct Args {
    workload: String,
    objective: String,
    steps: usize,
    warmup: usize,
    device: String,
    precision: Precision,
    chunked: Option<bool>,
    random_init: bool,
    rows: usize,
    vocab: usize,
    /// `--set KEY=VALUE` overrides of the workload's config, after the benchmark's own.
    sets: Vec<String>,
}

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        workload: String::new(),
        objective: "ce".into(),
        steps: 10,
        warmup: 2,
        device: "cpu".into(),
        precision: Precision::F32,
        chunked: None,
        random_init: false,
        rows: 4096,
        vocab: 32000,
        sets: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--workload" => args.workload = value("--workload")?,
            "--objective" => args.objective = value("--objective")?,
            "--steps" => args.steps = value("--steps")?.parse().context("--steps")?,
            "--warmup" => args.warmup = value("--warmup")?.parse().context("--warmup")?,
            "--device" => args.device = value("--device")?,
            "--precision" => args.precision = value("--precision")?.parse().map_err(anyhow::Error::msg)?,
            "--chunked" => args.chunked = Some(value("--chunked")?.parse().context("--chunked true|false")?),
            "--random-init" => args.random_init = true,
            "--rows" => args.rows = value("--rows")?.parse().context("--rows")?,
            "--vocab" => args.vocab = value("--vocab")?.parse().context("--vocab")?,
            "--set" => args.sets.push(value("--set")?),
            "--list" => {
                for w in WORKLOADS {
                    println!("{}", w.name);
                }
                println!("loss");
                return Ok(None);
            }
            // `cargo bench` passes `--bench` to every harness = false target.
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?} (expected --workload, --objective, --steps, --warmup, --device, \
                 --precision, --chunked, --random-init, --rows, --vocab, --list)"
            ),
        }
    }
    if args.workload.is_empty() {
        bail!("--workload is required; one of: {}", names());
    }
    if args.steps == 0 {
        bail!("--steps must be positive");
    }
    Ok(Some(args))
}

fn names() -> String {
    WORKLOADS
        .iter()
        .map(|w| w.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The all-MiniLM-L6-v2 folder: `COTEXT_MINILM`, else the cache path that
/// `scripts/fetch-minilm.sh` fills.
fn minilm_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("COTEXT_MINILM") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("COTEXT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cotext")
        });
    cache.join("all-minilm-l6-v2")
}

/// A copy of the MiniLM checkpoint in `dir` with random weights of the same shapes
/// (`Init::Normal(initializer_range)`, layer norms at 1 and 0), written to a fresh
/// temporary folder with `dir`'s config.json: the speed benchmark without the 90 MB
/// weights file.
fn random_minilm(dir: &std::path::Path) -> Result<PathBuf> {
    let config = dir.join("config.json");
    let hf = HfBertConfig::from_file(&config)?;
    let varmap = candle_nn::VarMap::new();
    let p = Params::new(varmap.clone(), DType::F32, &Device::Cpu, 1);
    Bert::build(&hf, &p.pp("bert"), 0.0, 0.0, SharedRng::new(0))?;
    let out = std::env::temp_dir().join(format!("cotext-random-minilm-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    std::fs::copy(&config, out.join("config.json"))?;
    varmap.save(out.join("model.safetensors"))?;
    Ok(out)
}

/// The `loss` workload: one token-level loss forward + backward on random logits
/// `[rows, vocab]` (in the compute dtype) per "update"; `chunked` picks the chunked
/// entry point (the fused kernel on CUDA) or the plain one.
fn loss_bench(args: &Args, dev: &Device) -> Result<()> {
    let dtype = args.precision.compute_dtype();
    let chunked = args.chunked.unwrap_or(true);
    let (n, v) = (args.rows, args.vocab);
    let logits = Tensor::randn(0f32, 3.0, (n, v), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    let logits = candle_core::Var::from_tensor(&logits)?;
    let targets: Vec<u32> = (0..n as u32)
        .map(|i| {
            if i % 10 == 9 {
                PAD
            } else {
                3 + (i * 7919) % (v as u32 - 3)
            }
        })
        .collect();
    let targets = Tensor::from_vec(targets, n, dev)?;
    let ce = CrossEntropyOptions {
        ignore_index: Some(PAD),
        label_smoothing: 0.0,
    };
    let co = ComplementOptions {
        ignore_index: Some(PAD),
        ..Default::default()
    };
    let once = || -> Result<f64> {
        let z = logits.as_tensor();
        let value = match (args.objective.as_str(), chunked) {
            ("ce", true) => loss::chunked_cross_entropy(z, &targets, &ce)?,
            ("ce", false) => loss::cross_entropy(z, &targets, &ce)?,
            (_, true) => loss::chunked_complement_entropy(z, &targets, &co)?,
            (_, false) => loss::complement_entropy(z, &targets, &co)?,
        };
        let grads = value.backward()?;
        let g = grads.get(z).context("no gradient")?;
        // Reading one value waits for the backward kernels. `copy` first: candle's
        // `to_vec1` of a view on a device copies the view's whole storage to the
        // host (the full gradient), which the first H200 run timed instead of the
        // loss.
        g.narrow(0, 0, 1)?
            .narrow(1, 0, 1)?
            .copy()?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(value.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    };
    for _ in 0..args.warmup {
        once()?;
    }
    let mut times = Vec::with_capacity(args.steps);
    let mut last = f64::NAN;
    let start = Instant::now();
    for _ in 0..args.steps {
        let s = Instant::now();
        last = once()?;
        times.push(s.elapsed().as_secs_f64());
    }
    dev.synchronize()?;
    let total = start.elapsed().as_secs_f64();
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{}",
        serde_json::json!({
            "side": "cotext",
            "workload": "loss",
            "objective": args.objective,
            "rows": n,
            "vocab": v,
            "device": args.device,
            "precision": args.precision.name(),
            "chunked_loss": chunked,
            "steps": args.steps,
            "ms_per_update": 1e3 * total / args.steps as f64,
            "ms_median": 1e3 * times[times.len() / 2],
            "tokens_per_s": n as f64 * args.steps as f64 / total,
            "peak_rss_mib": peak_rss_mib(),
            "last_loss": last,
        })
    );
    Ok(())
}

/// A fixed training batch: inputs, targets, and the non-pad input tokens it holds
/// (source + target tokens for translation, as `cotext train` counts them).
enum Batch {
    Classify {
        ids: Tensor,
        mask: Tensor,
        labels: Tensor,
        tokens: usize,
    },
    Translate {
        src: Tensor,
        mask: Tensor,
        tgt_in: Tensor,
        tgt_out: Tensor,
        tokens: usize,
    },
}

impl Batch {
    /// Draws the batch from `SplitMix64(DATA_SEED)`, with `x % n` for a value below
    /// `n`. Per row, in this order (`torch_ref.py` repeats it):
    /// - classification: length (`len` for row 0, else `len/2 + x % (len - len/2 + 1)`),
    ///   that many ids `1 + x % (vocab - 1)`, then the label `x % classes`;
    /// - translation: source length and ids `3 + x % (vocab - 3)` as above, then the
    ///   target length `L` (counting EOS) and `L - 1` target ids `y`; the decoder
    ///   reads `BOS y` and predicts `y EOS`.
    ///
    /// Rows are right-padded with 0.
    fn synthetic(shape: Shape) -> Result<Self> {
        let mut draw = Draw(SplitMix64::new(DATA_SEED));
        let dev = Device::Cpu;
        match shape {
            Shape::Classify {
                vocab,
                classes,
                batch,
                len,
            } => {
                let (mut ids, mut mask, mut labels, mut tokens) =
                    (vec![PAD; batch * len], vec![0u32; batch * len], vec![], 0);
                for r in 0..batch {
                    let l = draw.length(r, len);
                    for t in 0..l {
                        ids[r * len + t] = 1 + draw.below(vocab - 1) as u32;
                        mask[r * len + t] = 1;
                    }
                    labels.push(draw.below(classes) as u32);
                    tokens += l;
                }
                Ok(Batch::Classify {
                    ids: Tensor::from_vec(ids, (batch, len), &dev)?,
                    mask: Tensor::from_vec(mask, (batch, len), &dev)?,
                    labels: Tensor::from_vec(labels, batch, &dev)?,
                    tokens,
                })
            }
            Shape::Translate {
                vocab,
                batch,
                src,
                tgt,
            } => {
                let mut s_ids = vec![PAD; batch * src];
                let mut s_mask = vec![0u32; batch * src];
                let mut t_in = vec![PAD; batch * tgt];
                let mut t_out = vec![PAD; batch * tgt];
                let mut tokens = 0;
                for r in 0..batch {
                    let ls = draw.length(r, src);
                    for t in 0..ls {
                        s_ids[r * src + t] = 3 + draw.below(vocab - 3) as u32;
                        s_mask[r * src + t] = 1;
                    }
                    let lt = draw.length(r, tgt);
                    t_in[r * tgt] = BOS;
                    for t in 0..lt - 1 {
                        let y = 3 + draw.below(vocab - 3) as u32;
                        t_out[r * tgt + t] = y;
                        t_in[r * tgt + t + 1] = y;
                    }
                    t_out[r * tgt + lt - 1] = EOS;
                    tokens += ls + lt;
                }
                Ok(Batch::Translate {
                    src: Tensor::from_vec(s_ids, (batch, src), &dev)?,
                    mask: Tensor::from_vec(s_mask, (batch, src), &dev)?,
                    tgt_in: Tensor::from_vec(t_in, (batch, tgt), &dev)?,
                    tgt_out: Tensor::from_vec(t_out, (batch, tgt), &dev)?,
                    tokens,
                })
            }
        }
    }

    fn tokens(&self) -> usize {
        match self {
            Batch::Classify { tokens, .. } | Batch::Translate { tokens, .. } => *tokens,
        }
    }

    /// The same batch on `dev`.
    fn on_device(self, dev: &Device) -> Result<Self> {
        Ok(match self {
            Batch::Classify {
                ids,
                mask,
                labels,
                tokens,
            } => Batch::Classify {
                ids: ids.to_device(dev)?,
                mask: mask.to_device(dev)?,
                labels: labels.to_device(dev)?,
                tokens,
            },
            Batch::Translate {
                src,
                mask,
                tgt_in,
                tgt_out,
                tokens,
            } => Batch::Translate {
                src: src.to_device(dev)?,
                mask: mask.to_device(dev)?,
                tgt_in: tgt_in.to_device(dev)?,
                tgt_out: tgt_out.to_device(dev)?,
                tokens,
            },
        })
    }
}

/// The synthetic batch's random source.
struct Draw(SplitMix64);

impl Draw {
    /// `x % n` (the small modulo bias does not matter here and is trivial to repeat
    /// in Python).
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }

    /// A row length: `max` for row 0 (so the batch is `max` wide), else uniform in
    /// `[max/2, max]`.
    fn length(&mut self, row: usize, max: usize) -> usize {
        if row == 0 {
            max
        } else {
            max / 2 + self.below(max - max / 2 + 1)
        }
    }
}

enum Net {
    Classifier(Model),
    Translator(Seq2Seq),
}

/// Peak resident set size of this process so far, in MiB (`VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn threads() -> usize {
    let var = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n > 0)
    };
    var("CANDLE_NUM_THREADS")
        .or_else(|| var("RAYON_NUM_THREADS"))
        .unwrap_or_else(candle_core::utils::get_num_threads)
}

fn main() -> Result<()> {
    // As the cotext binary does.
    cotext::malloc::tune();
    cotext::threads::spin_less();
    cotext::threads::install(run)
}

fn run() -> Result<()> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    let dev = parse_device(&args.device)
        .map_err(anyhow::Error::msg)?
        .open()?;
    if args.workload == "loss" {
        return loss_bench(&args, &dev);
    }
    let w = WORKLOADS
        .iter()
        .find(|w| w.name == args.workload)
        .with_context(|| format!("unknown workload {:?}; one of: {}", args.workload, names()))?;
    let objective = match args.objective.as_str() {
        "ce" => Objective::CrossEntropy,
        "cot" => Objective::Cot,
        other => bail!("--objective must be ce or cot, got {other:?}"),
    };
    let mut overrides = vec![format!("train.optimizer.lr={LR}")];
    if let Some(c) = args.chunked {
        overrides.push(format!("train.chunked_loss={c}"));
    }
    let mut random_dir = None;
    if w.name == "minilm-sst2" {
        let mut dir = minilm_dir();
        if args.random_init {
            if !dir.join("config.json").is_file() {
                bail!("minilm-sst2 --random-init needs all-MiniLM-L6-v2's config.json in {} (or set COTEXT_MINILM)", dir.display());
            }
            dir = random_minilm(&dir)?;
            random_dir = Some(dir.clone());
        } else if !dir.join("model.safetensors").is_file() {
            bail!("minilm-sst2 needs all-MiniLM-L6-v2 in {} (scripts/fetch-minilm.sh, or set COTEXT_MINILM)", dir.display());
        }
        overrides.push(format!("model.path={:?}", dir.display().to_string()));
    }
    overrides.extend(args.sets.iter().cloned());
    let config_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(w.config);
    let config = RunConfig::load(&config_path, &overrides)?;
    let t = &config.train;
    let OptimizerConfig::Adamw { .. } = t.optimizer else {
        bail!(
            "{}: the benchmark expects an AdamW optimizer",
            config_path.display()
        );
    };
    let compute = args.precision.compute_dtype();
    let ignore = match w.shape {
        Shape::Classify { .. } => None,
        Shape::Translate { .. } => Some(PAD),
    };
    // As `cotext train` builds it (classify.rs / translate.rs `loss_config`).
    let losses = LossConfig {
        cross_entropy: CrossEntropyOptions {
            ignore_index: ignore,
            label_smoothing: t.label_smoothing,
        },
        complement: ComplementOptions {
            form: t.complement_form,
            normalization: t.complement_normalization.unwrap_or(Normalization::Classes),
            ignore_index: ignore,
        },
        clip_norm: t.clip_norm,
        chunked: t.chunked_loss,
    };
    let net = match w.shape {
        Shape::Classify { vocab, classes, .. } => Net::Classifier(config.model.build_mixed(
            vocab,
            classes,
            DType::F32,
            compute,
            &dev,
            t.seed,
        )?),
        Shape::Translate { vocab, .. } => {
            let s = config
                .model
                .seq2seq()
                .context("a translation workload needs a seq2seq config")?;
            Net::Translator(s.build_mixed(vocab, PAD, DType::F32, compute, &dev, t.seed)?)
        }
    };
    if let Some(d) = random_dir {
        // The weights are in the model now.
        std::fs::remove_dir_all(d).ok();
    }
    let (varmap, parameters) = match &net {
        Net::Classifier(m) => (m.varmap().clone(), m.num_parameters()),
        Net::Translator(m) => (m.varmap().clone(), m.num_parameters()),
    };
    let vars = varmap
        .data()
        .lock()
        .expect("VarMap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let projects = losses.projects(&objective);
    let mut stepper = Stepper::new(objective, losses, vars, t.optimizer.clone())?;
    let batch = Batch::synthetic(w.shape)?.on_device(&dev)?;

    let mut step_once = || -> Result<f64> {
        let report = match (&net, &batch) {
            (
                Net::Classifier(m),
                Batch::Classify {
                    ids, mask, labels, ..
                },
            ) => stepper.step(
                &[((ids.clone(), mask.clone()), labels.clone())],
                |(i, k): &(Tensor, Tensor)| m.forward(i, k, true),
            )?,
            (
                Net::Translator(m),
                Batch::Translate {
                    src,
                    mask,
                    tgt_in,
                    tgt_out,
                    ..
                },
            ) => stepper.step(
                &[((src.clone(), mask.clone(), tgt_in.clone()), tgt_out.clone())],
                // As `cotext train` does (train/translate.rs): the loss fused with
                // the output layer on the CPU in f32, the logits elsewhere.
                |(s, k, ti): &(Tensor, Tensor, Tensor)| -> candle_core::Result<Head> {
                    if !(m.projects_on_host() && projects) {
                        return m.forward(s, k, ti, true).map(Head::Logits);
                    }
                    let (weight, bias) = m.output_layer();
                    Ok(Head::Projected {
                        hidden: m.forward_hidden(s, k, ti, true)?,
                        weight,
                        bias,
                    })
                },
            )?,
            _ => unreachable!("the batch is drawn for the workload's shape"),
        };
        match report {
            Ok(r) => Ok(r.loss),
            Err(e) => bail!("non-finite {} value {}", e.pass, e.value),
        }
    };
    for _ in 0..args.warmup {
        step_once()?;
    }
    let mut times = Vec::with_capacity(args.steps);
    let mut loss = f64::NAN;
    let start = Instant::now();
    for _ in 0..args.steps {
        let s = Instant::now();
        loss = step_once()?;
        times.push(s.elapsed().as_secs_f64());
    }
    dev.synchronize()?;
    let total = start.elapsed().as_secs_f64();
    times.sort_by(|a, b| a.total_cmp(b));
    let tokens = batch.tokens();
    let line = serde_json::json!({
        "side": "cotext",
        "workload": w.name,
        "objective": args.objective,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": threads(),
        "device": args.device,
        "precision": args.precision.name(),
        "random_init": args.random_init,
        "parameters": parameters,
        "tokens_per_update": tokens,
        "ms_per_update": 1e3 * total / args.steps as f64,
        "ms_median": 1e3 * times[times.len() / 2],
        "tokens_per_s": tokens as f64 * args.steps as f64 / total,
        "peak_rss_mib": peak_rss_mib(),
        "clip_norm": t.clip_norm,
        "chunked_loss": t.chunked_loss,
        "sets": args.sets,
        "last_loss": loss,
    });
    println!("{line}");
    Ok(())
}
