//! `[model]` tables in TOML: kinds, defaults, unknown keys rejected, validation at
//! build time, and the seeded init.

mod models_support;

use candle_core::{DType, Device};
use cotext::models::{
    BertPooling, BiLstmConfig, LstmPooling, ModelConfig, NormPosition, PositionEncoding,
    TransformerConfig,
};

#[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct File {
    model: ModelConfig,
}

fn parse(s: &str) -> Result<ModelConfig, toml::de::Error> {
    toml::from_str::<File>(s).map(|f| f.model)
}

#[test]
fn kinds_parse_with_documented_defaults() {
    assert_eq!(
        parse("[model]\nkind = \"bilstm\"\n").unwrap(),
        ModelConfig::Bilstm(BiLstmConfig::default())
    );
    let d = BiLstmConfig::default();
    assert_eq!(
        (d.embed_dim, d.hidden, d.layers, d.dropout, d.pooling),
        (300, 256, 1, 0.5, LstmPooling::Max)
    );
    let t = match parse(
        "[model]\nkind = \"transformer\"\nnorm = \"post\"\npositions = \"learned\"\nheads = 8\n",
    )
    .unwrap()
    {
        ModelConfig::Transformer(t) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (t.norm, t.positions, t.heads, t.d_model),
        (NormPosition::Post, PositionEncoding::Learned, 8, 256)
    );
    let b = match parse("[model]\nkind = \"bert\"\npath = \"/m\"\npooling = \"cls\"\n").unwrap() {
        ModelConfig::Bert(b) => b,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (b.pooling, b.classifier_dropout, b.hidden_dropout),
        (BertPooling::Cls, 0.1, None)
    );
}

#[test]
fn unknown_keys_wrong_types_and_missing_path_are_rejected_by_name() {
    let e = parse("[model]\nkind = \"bilstm\"\nhiden = 3\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("hiden"), "{e}");
    let e = parse("[model]\nkind = \"transformer\"\nheads = \"four\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("heads") || e.contains("four"), "{e}");
    let e = parse("[model]\nkind = \"lstm\"\n").unwrap_err().to_string();
    assert!(e.contains("lstm"), "{e}");
    let e = parse("[model]\nkind = \"bert\"\n").unwrap_err().to_string();
    assert!(e.contains("path"), "{e}");
    let e = parse("[model]\nkind = \"bilstm\"\npooling = \"first\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("first"), "{e}");
}

#[test]
fn resolved_config_round_trips_through_toml() {
    for m in [
        ModelConfig::Bilstm(BiLstmConfig::default()),
        ModelConfig::Transformer(TransformerConfig::default()),
        parse("[model]\nkind = \"bert\"\npath = \"/m\"\nhidden_dropout = 0.2\n").unwrap(),
    ] {
        let f = File { model: m };
        let text = toml::to_string(&f).unwrap();
        assert_eq!(toml::from_str::<File>(&text).unwrap(), f, "{text}");
    }
}

#[test]
fn invalid_values_fail_at_build_with_the_key() {
    let dev = Device::Cpu;
    let bad = [
        (
            "[model]\nkind = \"transformer\"\nd_model = 10\nheads = 4\n",
            "heads",
        ),
        ("[model]\nkind = \"bilstm\"\ndropout = 1.0\n", "dropout"),
        ("[model]\nkind = \"bilstm\"\nlayers = 0\n", "layers"),
    ];
    for (text, key) in bad {
        let err = parse(text)
            .unwrap()
            .build(10, 2, DType::F32, &dev, 0)
            .unwrap_err();
        assert!(
            err.is_user_error() && err.to_string().contains(key),
            "{text}: {err}"
        );
    }
    let err = ModelConfig::Bilstm(BiLstmConfig::default())
        .build(10, 1, DType::F32, &dev, 0)
        .unwrap_err();
    assert!(err.to_string().contains("2 classes"), "{err}");
}

#[test]
fn the_seed_decides_init_and_dropout() {
    let dev = Device::Cpu;
    let cfg = ModelConfig::Transformer(TransformerConfig {
        d_model: 8,
        heads: 2,
        layers: 1,
        ffn_dim: 8,
        max_len: 8,
        ..TransformerConfig::default()
    });
    let (ids, mask) = models_support::batch(20, &[5, 3], 5, 1).unwrap();
    let run = |seed: u64| {
        let m = cfg.build(20, 3, DType::F32, &dev, seed).unwrap();
        let eval = m.forward(&ids, &mask, false).unwrap();
        let state = m.rng_state();
        let train = m.forward(&ids, &mask, true).unwrap();
        m.set_rng_state(state);
        let again = m.forward(&ids, &mask, true).unwrap();
        assert_eq!(
            models_support::max_abs_diff(&train, &again).unwrap(),
            0.0,
            "restored RNG state"
        );
        assert!(
            models_support::max_abs_diff(&train, &eval).unwrap() > 0.0,
            "dropout active in train"
        );
        (eval, train)
    };
    let (a, ta) = run(1);
    let (b, tb) = run(1);
    let (c, _) = run(2);
    assert_eq!(models_support::max_abs_diff(&a, &b).unwrap(), 0.0);
    assert_eq!(models_support::max_abs_diff(&ta, &tb).unwrap(), 0.0);
    assert!(models_support::max_abs_diff(&a, &c).unwrap() > 1e-4);
}

/// Every shipped config reads, and its sections agree with each other
/// (`TaskKind::check_config`: metric, model kind, tokenizer source, data.max_len
/// against the model's positions); BERT configs are checked against the MiniLM
/// checkpoint's own `config.json`.
#[test]
fn every_shipped_config_passes_the_cross_section_checks() {
    use cotext::task::TaskKind;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let mut config = cotext::train::RunConfig::load(&path, &[])
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let ModelConfig::Bert(b) = &mut config.model {
            let Some(minilm) = models_support::minilm_dir() else {
                return;
            };
            b.path = minilm;
        }
        let task = if config.model.seq2seq().is_some() {
            TaskKind::Translation
        } else {
            TaskKind::Classification
        };
        task.check_config(&config)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} configs in {}", dir.display());
}
