//! Inference: load a trained run directory (config, tokenizer, the best weights)
//! on a device the caller opened, and predict with it: class probabilities and
//! evaluation reports for classifiers ([`classify`]), beam-search translation,
//! BLEU and teacher-forced token distributions for translators ([`translate`]).
//! The CLI's `eval`, `predict`, `translate` and `attack`, `compare`'s report and
//! the training loop's dev and test evaluations all go through here.

pub mod classify;
pub mod translate;
