//! A memory estimate checked before a model is allocated: a typo such as
//! `model.hidden = 100000000` is refused with a message instead of aborting the
//! process on a failed allocation of tens of gigabytes.

use crate::error::{Error, Result};
use crate::models::ModelConfig;

/// Bytes per trained parameter, at the least: the f32 weight, its gradient and
/// two AdamW moments (COT's second optimizer adds two more, activations more).
const BYTES_PER_PARAMETER: f64 = 16.0;

/// Accelerators report no free memory here; no single one holds more than this.
const ACCELERATOR_LIMIT: f64 = (1u64 << 40) as f64;

/// A lower bound on the parameters of `model` with a `vocab`-token vocabulary:
/// the embedding and the layers' weight matrices (biases, norms and heads left
/// out). `None` for BERT, whose size its checkpoint fixes.
pub fn parameters_lower_bound(model: &ModelConfig, vocab: usize) -> Option<f64> {
    let v = vocab as f64;
    Some(match model {
        ModelConfig::Bilstm(c) => {
            let (e, h, l) = (c.embed_dim as f64, c.hidden as f64, c.layers as f64);
            // Two directions of 4 gates; layers after the first read both directions.
            v * e + 8.0 * h * (e + h) + (l - 1.0).max(0.0) * 8.0 * h * (3.0 * h)
        }
        ModelConfig::Transformer(c) => {
            let (d, f, l) = (c.d_model as f64, c.ffn_dim as f64, c.layers as f64);
            v * d + l * (4.0 * d * d + 2.0 * d * f)
        }
        ModelConfig::Bert(_) => return None,
        ModelConfig::LstmAttention(c) => {
            let (e, h, l) = (c.embed_dim as f64, c.hidden as f64, c.layers as f64);
            // Encoder and decoder stacks, and the output projection.
            v * e + 2.0 * l * 4.0 * h * (e + h) + v * h
        }
        ModelConfig::TransformerSeq2seq(c) => {
            let (d, f) = (c.d_model as f64, c.ffn_dim as f64);
            let (enc, dec) = (c.encoder_layers as f64, c.decoder_layers as f64);
            v * d + enc * (4.0 * d * d + 2.0 * d * f) + dec * (8.0 * d * d + 2.0 * d * f)
        }
    })
}

/// Refuses a model whose training would need more memory than there is: on the
/// CPU, the memory the system reports available; elsewhere, 1 TiB.
pub fn check_fits(model: &ModelConfig, vocab: usize, on_cpu: bool) -> Result<()> {
    let Some(params) = parameters_lower_bound(model, vocab) else {
        return Ok(());
    };
    let needed = params * BYTES_PER_PARAMETER;
    let (limit, what) = match available_memory().filter(|_| on_cpu) {
        Some(bytes) => (bytes as f64, "the memory available"),
        None => (ACCELERATOR_LIMIT, "the 1 TiB any device has at most"),
    };
    if needed > limit {
        return Err(Error::Config(format!(
            "the [model] section asks for at least {:.3e} parameters (vocabulary {vocab}), which need at least {} to train, \
             more than {what} ({}): make the model smaller",
            params,
            gib(needed),
            gib(limit)
        )));
    }
    Ok(())
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

/// `MemAvailable` from `/proc/meminfo` (Linux); `None` where it cannot be read.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bilstm(hidden: usize) -> ModelConfig {
        toml::from_str(&format!(
            "kind = \"bilstm\"\nembed_dim = 16\nhidden = {hidden}"
        ))
        .unwrap()
    }

    #[test]
    fn absurd_sizes_are_refused_and_small_ones_pass() {
        check_fits(&bilstm(16), 1000, true).unwrap();
        check_fits(&bilstm(16), 1000, false).unwrap();
        let err = check_fits(&bilstm(100_000_000), 1000, true).unwrap_err();
        assert!(
            err.is_user_error() && err.to_string().contains("make the model smaller"),
            "{err}"
        );
        assert!(check_fits(&bilstm(100_000_000), 1000, false).is_err());
    }
}
