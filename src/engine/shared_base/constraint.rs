//! Grammar-constrained decoding (`response_format` JSON schema / JSON object,
//! later tool-call grammars in Lark) on top of llguidance.
//!
//! llguidance works on bytes, so it needs each token's byte string and a token
//! trie: building that from the Hugging Face tokenizer is the slow part and is
//! done once per model in [`ConstraintFactory`]. Each sequence then gets a
//! [`Constraint`] (one llguidance `Matcher`) that yields a bitmask of allowed
//! tokens per step in the layout the sampler takes.
//!
//! Two choices differ from llguidance's defaults:
//! - JSON whitespace between tokens is bounded (see [`JSON_WHITESPACE`]):
//!   with the default unbounded whitespace a model can loop on newlines
//!   until `max_tokens`, which clients see as a hang that ends in invalid
//!   JSON.
//! - llguidance's own stderr logging is switched off; problems come back as
//!   errors instead.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use llguidance::api::{StopReason, TopLevelGrammar};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};
use tokenizers::Tokenizer;
use toktrie::{SimpleVob, TokTrie};
use toktrie_hf_tokenizers::{ByteTokenizer, ByteTokenizerEnv};

/// Whitespace the model may put between two JSON tokens: enough for a
/// newline plus two-space indentation 23 levels deep, bounded so a model
/// cannot emit whitespace forever. Ignored when a schema brings its own
/// `x-guidance` options.
pub const JSON_WHITESPACE: &str = r"[\x20\x0A\x0D\x09]{1,48}";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    /// The client's JSON schema cannot be used; meant for a 400 response.
    #[error("unsupported JSON schema: {0}")]
    InvalidSchema(String),
    /// The grammar does not compile; meant for a 400 when it came from a
    /// client, a bug when it came from the gateway.
    #[error("invalid grammar: {0}")]
    InvalidGrammar(String),
    /// Decoding went outside the grammar (a token the mask did not allow,
    /// or llguidance gave up); the sequence cannot continue constrained.
    #[error("grammar constraint failed: {0}")]
    Failed(String),
}

/// Per-model llguidance state; cheap to clone and shareable across threads.
#[derive(Clone)]
pub struct ConstraintFactory {
    parsers: Arc<ParserFactory>,
    eos: Arc<[u32]>,
    vocab_size: usize,
}

impl std::fmt::Debug for ConstraintFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintFactory")
            .field("eos", &self.eos)
            .field("vocab_size", &self.vocab_size)
            .finish_non_exhaustive()
    }
}

impl ConstraintFactory {
    /// `vocab_size`: the model's logits width (may exceed the tokenizer's
    /// vocabulary: extra ids are never allowed). `eos_token_ids`: every id
    /// that ends generation; a grammar can only finish by allowing one.
    pub fn new(
        tokenizer: &Tokenizer,
        eos_token_ids: &[u32],
        vocab_size: usize,
    ) -> anyhow::Result<ConstraintFactory> {
        anyhow::ensure!(
            !eos_token_ids.is_empty(),
            "constrained decoding needs at least one EOS token id"
        );
        let tokenizer_vocab = tokenizer.get_vocab_size(true);
        anyhow::ensure!(
            vocab_size >= tokenizer_vocab && u32::try_from(vocab_size).is_ok(),
            "model vocabulary ({vocab_size}) is smaller than the tokenizer's ({tokenizer_vocab})"
        );
        if let Some(bad) = eos_token_ids.iter().find(|&&id| id as usize >= vocab_size) {
            anyhow::bail!("EOS token id {bad} is outside the model vocabulary ({vocab_size})");
        }
        // toktrie and toktrie_hf_tokenizers assert on inputs they do not
        // expect; at model load an error is more useful than a panic.
        catch_unwind(AssertUnwindSafe(|| {
            build_factory(tokenizer, eos_token_ids, vocab_size)
        }))
        .map_err(|panic| {
            anyhow::anyhow!(
                "llguidance could not index this tokenizer: {}",
                panic_message(&panic)
            )
        })?
    }

    /// A constraint that accepts one JSON value valid against `schema`.
    pub fn json_schema(&self, schema: &Value) -> Result<Constraint, ConstraintError> {
        let mut schema = schema.clone();
        if let Some(object) = schema.as_object_mut() {
            object
                .entry("x-guidance")
                .or_insert_with(|| json!({ "whitespace_pattern": JSON_WHITESPACE }));
        }
        self.constraint(TopLevelGrammar::from_json_schema(schema))
            .map_err(ConstraintError::InvalidSchema)
    }

    /// A constraint that accepts any JSON object (OpenAI's `json_object`).
    pub fn json_object(&self) -> Result<Constraint, ConstraintError> {
        self.json_schema(&json!({ "type": "object" }))
    }

    /// A constraint from llguidance's Lark dialect (special tokens are
    /// written `<|im_end|>`, JSON schemas embed as `%json { ... }`).
    pub fn lark(&self, grammar: &str) -> Result<Constraint, ConstraintError> {
        self.constraint(TopLevelGrammar::from_lark(grammar.to_string()))
            .map_err(ConstraintError::InvalidGrammar)
    }

    fn constraint(&self, grammar: TopLevelGrammar) -> Result<Constraint, String> {
        // Grammar compilation runs on client input; a panic in it must not
        // take the engine down with it.
        let parser = catch_unwind(AssertUnwindSafe(|| self.parsers.create_parser(grammar)))
            .map_err(|panic| format!("internal llguidance error: {}", panic_message(&panic)))?
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(error);
        }
        let mut constraint = Constraint {
            matcher,
            mask: SimpleVob::new(),
            eos: Arc::clone(&self.eos),
            vocab_size: self.vocab_size,
            accepting: false,
        };
        constraint.refresh_accepting();
        Ok(constraint)
    }
}

fn build_factory(
    tokenizer: &Tokenizer,
    eos: &[u32],
    vocab_size: usize,
) -> anyhow::Result<ConstraintFactory> {
    let specials: Vec<(u32, String)> = tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, added)| added.special)
        .map(|(id, added)| (id, added.content))
        .collect();
    let byte_tokenizer = ByteTokenizer::from_tokenizer(tokenizer.clone())?;
    let mut info = byte_tokenizer.tokrx_info();
    let mut token_bytes = byte_tokenizer.token_bytes();
    // A special token without the marker would be matchable as plain text,
    // letting a grammar emit e.g. `<|im_end|>` inside a JSON string; some
    // tokenizers (e.g. Tekken) defeat toktrie_hf_tokenizers' detection.
    for (id, content) in specials {
        if let Some(bytes) = token_bytes.get_mut(id as usize)
            && bytes.first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER)
        {
            *bytes = std::iter::once(TokTrie::SPECIAL_TOKEN_MARKER)
                .chain(content.into_bytes())
                .collect();
        }
    }
    // Ids the model has but the tokenizer lacks become unnamed special
    // tokens: no grammar can produce them, so they are never allowed.
    while token_bytes.len() < vocab_size {
        let name = format!("<[padding {}]>", token_bytes.len());
        token_bytes.push(
            std::iter::once(TokTrie::SPECIAL_TOKEN_MARKER)
                .chain(name.into_bytes())
                .collect(),
        );
    }
    info.vocab_size = vocab_size as u32;
    info.tok_eos = eos[0];
    let tok_trie = TokTrie::from(&info, &token_bytes).with_eos_tokens(eos);
    let env = ByteTokenizerEnv {
        tokenizer: byte_tokenizer,
        tok_trie,
    }
    .to_env();
    let mut parsers = ParserFactory::new_simple(&env)?;
    parsers.quiet();
    Ok(ConstraintFactory {
        parsers: Arc::new(parsers),
        eos: eos.into(),
        vocab_size,
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// The grammar state of one sequence.
pub struct Constraint {
    matcher: Matcher,
    mask: SimpleVob,
    eos: Arc<[u32]>,
    vocab_size: usize,
    /// Cached because llguidance's own query needs `&mut`.
    accepting: bool,
}

impl Constraint {
    /// Bitmask over the model vocab (bit i of word i/32), valid until the
    /// next commit. Once the grammar has finished it allows only the EOS ids.
    pub fn allowed(&mut self) -> Result<&[u32], ConstraintError> {
        self.mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| ConstraintError::Failed(e.to_string()))?;
        // toktrie allocates room for one bit past the vocabulary, which
        // adds a word when the vocabulary is a multiple of 32.
        let words = self.vocab_size.div_ceil(32);
        let mask = self.mask.as_slice();
        if mask.len() < words {
            return Err(ConstraintError::Failed(format!(
                "llguidance returned a mask of {} words for {} tokens",
                mask.len(),
                self.vocab_size
            )));
        }
        Ok(&mask[..words])
    }

    /// Advances the grammar by the sampled token. EOS after the grammar has
    /// finished is accepted (and changes nothing); any other token then is
    /// an error.
    pub fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        if token as usize >= self.vocab_size {
            return Err(ConstraintError::Failed(format!(
                "token {token} is outside the vocabulary ({})",
                self.vocab_size
            )));
        }
        if let Some(error) = self.matcher.get_error() {
            return Err(ConstraintError::Failed(error));
        }
        if self.matcher.is_stopped() {
            if self.eos.contains(&token) {
                return Ok(());
            }
            return Err(ConstraintError::Failed(format!(
                "token {token} after the grammar finished; only EOS may follow"
            )));
        }
        let result = self
            .matcher
            .consume_token(token)
            .map_err(|e| ConstraintError::Failed(e.to_string()));
        self.refresh_accepting();
        result
    }

    /// What was generated is a complete match: EOS is allowed now (more
    /// tokens may be too, unless [`Constraint::is_stopped`]).
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// Nothing but EOS can follow (the grammar finished or EOS was
    /// committed), or the constraint failed: stop generating. Check
    /// [`Constraint::error`] to tell the two apart.
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Why the constraint failed, if it did.
    pub fn error(&self) -> Option<String> {
        self.matcher.get_error()
    }

    fn refresh_accepting(&mut self) {
        self.accepting = match self.matcher.stop_reason() {
            StopReason::NotStopped => self.matcher.is_accepting().unwrap_or(false),
            StopReason::NoExtension | StopReason::EndOfSentence => true,
            _ => false,
        };
    }
}

#[cfg(test)]
mod tests;
