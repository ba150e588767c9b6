//! `cotext tokenizer`: train a tokenizer on a dataset split, encode, decode,
//! and check that decoding gives back the exact text.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use cotext::data::parallel::read_lines;
use cotext::data::SplitData;
use cotext::tokenize::{
    self, EncodeOptions, TextTokenizer, TokenizerKind, TrainConfig, Truncation,
};

use super::data::DataSource;

#[derive(Debug, Args)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    command: TokenizerCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    WordLevel,
    Bpe,
    Wordpiece,
    Unigram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Side {
    Both,
    Source,
    Target,
}

/// Which texts to read: a dataset split or a plain text file.
#[derive(Debug, Args)]
struct Corpus {
    /// Dataset name (see `cotext data list`) or path to a card (.toml).
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "text",
        conflicts_with = "text"
    )]
    data: Option<String>,
    /// A UTF-8 text file, one text per line, instead of a dataset.
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// The split to read.
    #[arg(long, default_value = "train")]
    split: String,
    /// Translation data: which side(s) to read.
    #[arg(long, value_enum, default_value_t = Side::Both)]
    side: Side,
    /// Use only the first N texts.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    #[command(flatten)]
    source: DataSource,
}

impl Corpus {
    fn describe(&self) -> String {
        match (&self.data, &self.text) {
            (Some(name), _) => format!("{name}/{}", self.split),
            (None, Some(path)) => path.display().to_string(),
            (None, None) => unreachable!("clap requires one"),
        }
    }

    fn texts(&self) -> anyhow::Result<Vec<String>> {
        let mut texts = match (&self.data, &self.text) {
            (Some(name), _) => {
                let dataset = self.source.open(name)?;
                match dataset.load(&self.split, &self.source.options())? {
                    SplitData::Classification(examples) => {
                        examples.into_iter().map(|e| e.text).collect()
                    }
                    SplitData::Translation(pairs) => pairs
                        .into_iter()
                        .flat_map(|p| match self.side {
                            Side::Both => vec![p.source, p.target],
                            Side::Source => vec![p.source],
                            Side::Target => vec![p.target],
                        })
                        .collect(),
                }
            }
            (None, Some(path)) => read_lines(path)?,
            (None, None) => unreachable!("clap requires one"),
        };
        if let Some(limit) = self.limit {
            texts.truncate(limit);
        }
        Ok(texts)
    }
}

#[derive(Debug, Subcommand)]
enum TokenizerCommand {
    /// Train a tokenizer and save it as a tokenizer.json.
    Train {
        #[command(flatten)]
        corpus: Corpus,
        /// Model: byte-level BPE and Unigram decode losslessly; word-level and WordPiece do not.
        #[arg(long, value_enum, default_value_t = Kind::Bpe)]
        kind: Kind,
        /// Vocabulary size including the special tokens <pad> <s> </s> <unk> (ids 0-3).
        #[arg(long, default_value_t = 8000)]
        vocab_size: usize,
        /// Minimum frequency of a merge or word (not used by Unigram).
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// Output file (written atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the token ids (and tokens) of each TEXT.
    Encode {
        /// A tokenizer.json (cotext's or any Hugging Face one).
        #[arg(long, value_name = "FILE")]
        tokenizer: PathBuf,
        /// Add <s> and </s>.
        #[arg(long)]
        specials: bool,
        /// Truncate to at most this many tokens.
        #[arg(long)]
        max_len: Option<usize>,
        /// With --max-len: keep this many tokens from the start and the rest from the end.
        #[arg(long, requires = "max_len")]
        head: Option<usize>,
        /// Texts to encode.
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Print the text of token IDS.
    Decode {
        /// A tokenizer.json.
        #[arg(long, value_name = "FILE")]
        tokenizer: PathBuf,
        /// Keep special tokens in the output.
        #[arg(long)]
        keep_specials: bool,
        /// Token ids.
        #[arg(required = true)]
        ids: Vec<u32>,
    },
    /// Check decode(encode(x)) == x on every text of a split or file.
    Roundtrip {
        /// A tokenizer.json.
        #[arg(long, value_name = "FILE")]
        tokenizer: PathBuf,
        #[command(flatten)]
        corpus: Corpus,
    },
}

pub fn run(args: TokenizerArgs) -> anyhow::Result<()> {
    match args.command {
        TokenizerCommand::Train {
            corpus,
            kind,
            vocab_size,
            min_frequency,
            out,
        } => {
            let texts = corpus.texts()?;
            let config = TrainConfig {
                kind: match kind {
                    Kind::WordLevel => TokenizerKind::WordLevel,
                    Kind::Bpe => TokenizerKind::Bpe,
                    Kind::Wordpiece => TokenizerKind::WordPiece,
                    Kind::Unigram => TokenizerKind::Unigram,
                },
                vocab_size,
                min_frequency,
                ..TrainConfig::default()
            };
            let start = Instant::now();
            let tokenizer = tokenize::train(texts.iter().map(String::as_str), &config)?;
            tokenizer.save(&out)?;
            println!(
                "trained {} tokenizer on {} texts of {} in {:.1} s: vocab {} -> {}",
                config.kind.name(),
                texts.len(),
                corpus.describe(),
                start.elapsed().as_secs_f64(),
                tokenizer.vocab_size(),
                out.display()
            );
            Ok(())
        }
        TokenizerCommand::Encode {
            tokenizer,
            specials,
            max_len,
            head,
            texts,
        } => {
            let tokenizer = TextTokenizer::from_file(&tokenizer)?;
            let truncation = match (max_len, head) {
                (None, _) => Truncation::None,
                (Some(max_len), None) => Truncation::Head { max_len },
                (Some(max_len), Some(head)) => Truncation::HeadTail { max_len, head },
            };
            let options = EncodeOptions {
                add_bos: specials,
                add_eos: specials,
                truncation,
            };
            for text in &texts {
                let ids = tokenizer.encode_with(text, &options)?;
                let tokens: Vec<String> = ids
                    .iter()
                    .map(|&id| tokenizer.id_to_token(id).unwrap_or_else(|| "?".into()))
                    .collect();
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                println!("{}", ids.join(" "));
                println!("{}", tokens.join(" "));
            }
            Ok(())
        }
        TokenizerCommand::Decode {
            tokenizer,
            keep_specials,
            ids,
        } => {
            let tokenizer = TextTokenizer::from_file(&tokenizer)?;
            println!("{}", tokenizer.decode(&ids, !keep_specials)?);
            Ok(())
        }
        TokenizerCommand::Roundtrip {
            tokenizer: path,
            corpus,
        } => {
            let tokenizer = TextTokenizer::from_file(&path)?;
            let texts = corpus.texts()?;
            let mut failures = 0usize;
            let mut tokens = 0usize;
            for (i, text) in texts.iter().enumerate() {
                let ids = tokenizer.encode(text)?;
                tokens += ids.len();
                let back = tokenizer.decode(&ids, false)?;
                if &back != text {
                    if failures == 0 {
                        eprintln!("text {}: {text:?}\n  decoded: {back:?}", i + 1);
                    }
                    failures += 1;
                }
            }
            println!(
                "{}/{} texts of {} round-trip exactly ({} tokens, {:.2} per text)",
                texts.len() - failures,
                texts.len(),
                corpus.describe(),
                tokens,
                tokens as f64 / texts.len().max(1) as f64
            );
            if failures > 0 {
                return Err(anyhow::anyhow!("{failures} texts do not round-trip"))
                    .with_context(|| format!("tokenizer {}", path.display()));
            }
            Ok(())
        }
    }
}
