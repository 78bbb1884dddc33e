//! Unit tests of `constraint`.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Map;
use std::time::{Duration, Instant};

const END_OF_TEXT: u32 = 256;
const IM_START: u32 = 257;
const IM_END: u32 = 258;
const TOKENIZER_VOCAB: u32 = 259;
/// Wider than the tokenizer, as model embeddings usually are.
const MODEL_VOCAB: usize = 320;
const EOS: [u32; 2] = [END_OF_TEXT, IM_END];

/// GPT-2's byte-to-unicode alphabet.
fn byte_to_char(byte: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(byte) {
        return char::from(byte);
    }
    let offset = (0..byte).filter(|b| !printable(*b)).count() as u32;
    char::from_u32(256 + offset).unwrap()
}

/// The gateway's fixture: 256 byte tokens, no merges, three specials,
/// plus optional extra multi-byte tokens (for timing).
fn tokenizer_with(extra: &[Vec<u8>]) -> Tokenizer {
    let mut vocab = Map::new();
    for byte in 0..=255u8 {
        vocab.insert(byte_to_char(byte).to_string(), json!(byte));
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    for (i, token) in specials.iter().enumerate() {
        vocab.insert(token.to_string(), json!(256 + i));
    }
    for bytes in extra {
        let name: String = bytes.iter().map(|&b| byte_to_char(b)).collect();
        let id = vocab.len();
        vocab.entry(name).or_insert(json!(id));
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, token)| {
            json!({
                "id": 256 + i, "content": token, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true
            })
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let json = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": null,
        "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    });
    Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap()
}

fn factory() -> ConstraintFactory {
    ConstraintFactory::new(&tokenizer_with(&[]), &EOS, MODEL_VOCAB).unwrap()
}

fn allowed_ids(mask: &[u32]) -> Vec<u32> {
    (0..(mask.len() * 32) as u32)
        .filter(|&id| mask[id as usize / 32] & (1 << (id % 32)) != 0)
        .collect()
}

/// One step of a constrained run: the text so far and whether EOS was
/// allowed after it.
struct Step {
    text: Vec<u8>,
    eos_allowed: bool,
}

struct Run {
    text: String,
    steps: Vec<Step>,
    mask_time: Duration,
    masks: u32,
}

/// Drives `constraint` with a deterministic "model" until the grammar
/// stops or EOS is chosen, checking the mask invariants on every step.
fn drive(mut constraint: Constraint, mut pick: impl FnMut(&[u32]) -> u32) -> Run {
    let mut text = Vec::new();
    let mut steps = Vec::new();
    let mut mask_time = Duration::ZERO;
    let mut masks = 0;
    for _ in 0..5_000 {
        let start = Instant::now();
        let mask = constraint.allowed().unwrap();
        mask_time += start.elapsed();
        masks += 1;
        assert_eq!(mask.len(), MODEL_VOCAB.div_ceil(32));
        let ids = allowed_ids(mask);
        assert!(!ids.is_empty());
        // Padding ids and non-EOS specials are never producible.
        assert!(
            ids.iter().all(|&id| id < TOKENIZER_VOCAB && id != IM_START),
            "{ids:?}"
        );
        let eos_allowed = ids.iter().any(|id| EOS.contains(id));
        assert_eq!(eos_allowed, constraint.is_accepting(), "after {text:?}");
        steps.push(Step {
            text: text.clone(),
            eos_allowed,
        });
        if constraint.is_stopped() {
            assert!(ids.iter().all(|id| EOS.contains(id)));
            constraint.commit(END_OF_TEXT).unwrap();
            break;
        }
        let token = pick(&ids);
        constraint.commit(token).unwrap();
        if EOS.contains(&token) {
            assert!(constraint.is_stopped() && constraint.is_accepting());
            break;
        }
        text.push(token as u8);
    }
    let tail = &text[text.len().saturating_sub(100)..];
    assert!(constraint.is_stopped(), "no end; text ends {tail:?}");
    assert_eq!(constraint.error(), None);
    Run {
        text: String::from_utf8(text).unwrap(),
        steps,
        mask_time,
        masks,
    }
}

fn lowest(ids: &[u32]) -> u32 {
    ids[0]
}

/// Random allowed token, leaning towards EOS and closing characters so
/// that runs end in reasonable time.
fn random_model(seed: u64) -> impl FnMut(&[u32]) -> u32 {
    let mut rng = StdRng::seed_from_u64(seed);
    move |ids: &[u32]| {
        let eos: Vec<u32> = ids.iter().copied().filter(|id| EOS.contains(id)).collect();
        if !eos.is_empty() && rng.random_bool(0.5) {
            return eos[0];
        }
        let closers: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| [b'"', b'}', b']'].map(u32::from).contains(&id))
            .collect();
        if !closers.is_empty() && rng.random_bool(0.3) {
            return closers[rng.random_range(0..closers.len())];
        }
        let bytes: Vec<u32> = ids.iter().copied().filter(|id| !EOS.contains(id)).collect();
        if bytes.is_empty() {
            return ids[0];
        }
        bytes[rng.random_range(0..bytes.len())]
    }
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "age", "ok"],
        "additionalProperties": false
    })
}

/// Hand-written check of `schema()`, independent of llguidance.
fn satisfies_schema(value: &Value) -> bool {
    let Some(object) = value.as_object() else {
        return false;
    };
    let known = ["name", "age", "tags", "ok"];
    object.keys().all(|k| known.contains(&k.as_str()))
        && object
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|s| s.chars().count() <= 8)
        && object
            .get("age")
            .and_then(Value::as_u64)
            .is_some_and(|age| age <= 150)
        && object.get("ok").is_some_and(Value::is_boolean)
        && object.get("tags").is_none_or(|tags| {
            tags.as_array()
                .is_some_and(|tags| tags.len() <= 3 && tags.iter().all(|t| t == "a" || t == "b"))
        })
}

fn parses_to(text: &[u8], accept: impl Fn(&Value) -> bool) -> bool {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .is_some_and(|value| accept(&value))
}

#[test]
fn json_schema_runs_produce_valid_documents() {
    let factory = factory();
    let mut runs = vec![drive(factory.json_schema(&schema()).unwrap(), lowest)];
    for seed in 0..12 {
        runs.push(drive(
            factory.json_schema(&schema()).unwrap(),
            random_model(seed),
        ));
    }
    let mut total_time = Duration::ZERO;
    let mut total_masks = 0;
    for run in &runs {
        let value: Value = serde_json::from_str(&run.text).unwrap();
        assert!(satisfies_schema(&value), "{}", run.text);
        // EOS is allowed exactly when the text so far is a complete,
        // valid document.
        for step in &run.steps {
            assert_eq!(
                step.eos_allowed,
                parses_to(&step.text, satisfies_schema),
                "after {:?}",
                String::from_utf8_lossy(&step.text)
            );
        }
        total_time += run.mask_time;
        total_masks += run.masks;
    }
    println!(
        "schema runs: {:?}; mask {:?} per token over {total_masks} tokens",
        runs.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
        total_time / total_masks
    );
}

#[test]
fn internal_refs_resolve() {
    // Pydantic-style schemas put shared types under $defs.
    let schema = json!({
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"id": {"type": "integer"}},
                "required": ["id"],
                "additionalProperties": false
            }
        },
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "maxItems": 2}},
        "required": ["items"],
        "additionalProperties": false
    });
    let valid = |value: &Value| {
        value.as_object().is_some_and(|o| o.len() == 1)
            && value["items"].as_array().is_some_and(|items| {
                items.len() <= 2
                    && items.iter().all(|item| {
                        item.as_object().is_some_and(|o| o.len() == 1) && item["id"].is_i64()
                    })
            })
    };
    let factory = factory();
    let mut non_empty = 0;
    for seed in 0..8 {
        // Open the top-level object and one item, then go random.
        let mut random = random_model(300 + seed);
        let mut opened = 0;
        let open = u32::from(b'{');
        let model = move |ids: &[u32]| {
            if opened < 2 && ids.contains(&open) {
                opened += 1;
                return open;
            }
            random(ids)
        };
        let run = drive(factory.json_schema(&schema).unwrap(), model);
        let value: Value = serde_json::from_str(&run.text).unwrap();
        assert!(valid(&value), "{}", run.text);
        non_empty += usize::from(!value["items"].as_array().unwrap().is_empty());
    }
    assert_eq!(non_empty, 8);
}

#[test]
fn json_object_runs_produce_objects() {
    let factory = factory();
    let mut lengths = Vec::new();
    for seed in 0..12 {
        let run = drive(factory.json_object().unwrap(), random_model(100 + seed));
        let value: Value = serde_json::from_str(&run.text).unwrap();
        assert!(value.is_object(), "{}", run.text);
        for step in &run.steps {
            assert_eq!(
                step.eos_allowed,
                parses_to(&step.text, Value::is_object),
                "after {:?}",
                String::from_utf8_lossy(&step.text)
            );
        }
        lengths.push(run.text.len());
    }
    // The model is random enough to produce more than `{}`.
    assert!(lengths.iter().any(|&l| l > 10), "{lengths:?}");
}

#[test]
fn whitespace_between_json_tokens_is_bounded() {
    // Whitespace wherever it may go ('\t' is the lowest id), otherwise
    // close the object.
    let run = drive(factory().json_object().unwrap(), |ids| {
        if ids[0] == u32::from(b'\t') {
            return ids[0];
        }
        let close = u32::from(b'}');
        if ids.contains(&close) { close } else { ids[0] }
    });
    let value: Value = serde_json::from_str(&run.text).unwrap();
    assert!(value.is_object());
    let longest_gap = run
        .text
        .split(|c: char| !c.is_ascii_whitespace())
        .map(str::len)
        .max()
        .unwrap();
    assert!(longest_gap > 0 && longest_gap <= 48, "{:?}", run.text);
}

#[test]
fn unusable_schemas_are_refused_with_a_message() {
    let factory = factory();
    let bad = [
        json!({"type": "integer", "minimum": 5, "maximum": 1}),
        json!({"$ref": "#/$defs/missing"}),
        json!({"type": "string", "pattern": "(?=lookahead)x"}),
        json!({"type": "frobnicate"}),
        json!("not a schema"),
    ];
    for schema in bad {
        match factory.json_schema(&schema) {
            Err(ConstraintError::InvalidSchema(message)) => {
                assert!(message.len() > 5, "{schema}: {message:?}");
                println!("{schema} -> {message}");
            }
            Err(other) => panic!("{schema}: wrong error {other:?}"),
            Ok(_) => panic!("{schema}: accepted"),
        }
    }
}

#[test]
fn lark_grammars_constrain_and_report_errors() {
    let factory = factory();
    let run = drive(factory.lark(r#"start: "yes" | "no""#).unwrap(), lowest);
    assert_eq!(run.text, "no");
    let run = drive(factory.lark(r#"start: "yes" | "no""#).unwrap(), |ids| {
        *ids.last().unwrap()
    });
    assert_eq!(run.text, "yes");

    // Masks are optional: committing without asking works the same.
    let mut unasked = factory.lark(r#"start: "yes" | "no""#).unwrap();
    for byte in *b"yes" {
        unasked.commit(u32::from(byte)).unwrap();
    }
    assert!(unasked.is_stopped() && unasked.is_accepting());

    // Special tokens are grammar terminals, never spelled out as text.
    let mut special = factory.lark(r#"start: "ok" <|im_start|>"#).unwrap();
    for byte in *b"ok" {
        special.allowed().unwrap();
        special.commit(u32::from(byte)).unwrap();
    }
    assert_eq!(allowed_ids(special.allowed().unwrap()), vec![IM_START]);
    special.commit(IM_START).unwrap();
    assert!(special.is_stopped() && special.is_accepting());

    match factory.lark("start: missing_rule") {
        Err(ConstraintError::InvalidGrammar(message)) => {
            assert!(message.contains("missing_rule"), "{message}")
        }
        Err(other) => panic!("wrong error {other:?}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn eos_is_allowed_only_where_the_grammar_can_end() {
    let factory = factory();
    // "a" may end, or continue to "ab".
    let mut constraint = factory.lark(r#"start: "a" | "ab""#).unwrap();
    let eos_allowed = |c: &mut Constraint| {
        let ids = allowed_ids(c.allowed().unwrap());
        EOS.iter().all(|eos| ids.contains(eos))
    };
    assert!(!eos_allowed(&mut constraint));
    assert!(!constraint.is_accepting());
    constraint.commit(u32::from(b'a')).unwrap();
    assert!(eos_allowed(&mut constraint));
    assert!(constraint.is_accepting() && !constraint.is_stopped());
    // Either EOS id ends it.
    constraint.commit(IM_END).unwrap();
    assert!(constraint.is_stopped() && constraint.is_accepting());
    assert_eq!(constraint.error(), None);
    // EOS again is harmless; text is not.
    constraint.commit(END_OF_TEXT).unwrap();
    assert!(constraint.commit(u32::from(b'b')).is_err());
}

#[test]
fn a_token_outside_the_mask_fails_the_constraint() {
    let mut constraint = factory().json_object().unwrap();
    constraint.allowed().unwrap();
    assert!(matches!(
        constraint.commit(u32::from(b'x')),
        Err(ConstraintError::Failed(_))
    ));
    assert!(constraint.is_stopped());
    assert!(!constraint.is_accepting());
    assert!(constraint.error().is_some());
    assert!(constraint.allowed().is_err());
    // Nor does EOS rescue it.
    assert!(constraint.commit(END_OF_TEXT).is_err());

    let mut early_eos = factory().json_object().unwrap();
    assert!(early_eos.commit(END_OF_TEXT).is_err());
    let mut out_of_range = factory().json_object().unwrap();
    assert!(out_of_range.commit(MODEL_VOCAB as u32).is_err());
}

#[test]
fn factory_rejects_unusable_setups() {
    let tokenizer = tokenizer_with(&[]);
    assert!(ConstraintFactory::new(&tokenizer, &[], MODEL_VOCAB).is_err());
    assert!(ConstraintFactory::new(&tokenizer, &EOS, 100).is_err());
    assert!(ConstraintFactory::new(&tokenizer, &[MODEL_VOCAB as u32], MODEL_VOCAB).is_err());
    // Exactly the tokenizer's size is fine too.
    assert!(ConstraintFactory::new(&tokenizer, &EOS, TOKENIZER_VOCAB as usize).is_ok());
}

#[test]
fn shareable_across_engine_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<ConstraintFactory>();
    send::<Constraint>();
}

/// A byte-level vocabulary of about 49k tokens (letters, words with a
/// leading space, numbers, JSON punctuation) for realistic timings:
/// `cargo test --release -- --ignored --nocapture constraint_timing`
#[test]
#[ignore]
fn constraint_timing() {
    let letters: Vec<u8> = (b'a'..=b'z').collect();
    let mut extra: Vec<Vec<u8>> = Vec::new();
    for &a in &letters {
        for &b in &letters {
            extra.push(vec![a, b]);
            extra.push(vec![b' ', a, b]);
            for &c in &letters {
                extra.push(vec![a, b, c]);
                extra.push(vec![b' ', a, b, c]);
                extra.push(vec![b' ', a.to_ascii_uppercase(), b, c]);
            }
        }
    }
    for n in 0..1000 {
        extra.push(n.to_string().into_bytes());
    }
    for p in [
        "{\"", "\":", "\",", "\":\"", "},", "\n", "\n  ", "  ", "    ", "\"}", "[\"", "\"]",
    ] {
        extra.push(p.as_bytes().to_vec());
    }
    extra.truncate(49_152 - 259);
    let tokenizer = tokenizer_with(&extra);
    let vocab = tokenizer.get_vocab_size(true);
    let start = Instant::now();
    let factory = ConstraintFactory::new(&tokenizer, &[END_OF_TEXT], vocab).unwrap();
    println!("factory for {vocab} tokens: {:?}", start.elapsed());
    let start = Instant::now();
    let mut constraint = factory.json_schema(&schema()).unwrap();
    println!("schema compile: {:?}", start.elapsed());
    let mut rng = StdRng::seed_from_u64(5);
    let mut mask_time = Duration::ZERO;
    let mut steps = 0u32;
    while !constraint.is_stopped() && steps < 2000 {
        let start = Instant::now();
        let mask = constraint.allowed().unwrap();
        mask_time += start.elapsed();
        steps += 1;
        let ids = allowed_ids(mask);
        let token = if ids.contains(&END_OF_TEXT) || rng.random_bool(0.2) {
            ids[ids.len() - 1]
        } else {
            ids[rng.random_range(0..ids.len())]
        };
        constraint.commit(token).unwrap();
    }
    println!(
        "mask: {:?} per token over {steps} tokens",
        mask_time / steps
    );
}
