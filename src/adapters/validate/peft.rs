//! Every field of peft's `LoraConfig` (peft 0.21.2: `tuners/lora/config.py`
//! and the `PeftConfig` base in `config.py`), with what the engine does with
//! it. mistral.rs 0.8.1 merges `W + (lora_alpha / r) · B · A` into each
//! target module of every layer and nothing else, so a field that changes
//! what the trained adapter computes beyond that would be served as a
//! different model without a word. Those are refused unless they hold
//! peft's default; fields a newer peft adds are refused the same way until
//! someone reads what they do and adds them here.

use serde_json::{Map, Value};

enum Rule {
    /// Read by the validator (`r`, `lora_alpha`, `target_modules`,
    /// `peft_type`) and applied by the engine.
    Honoured,
    /// No effect on what the saved adapter computes at inference.
    Inert,
    /// Accepted only at peft's default (null, false, empty); the text says
    /// what the engine would get wrong.
    DefaultOnly(&'static str),
    /// Accepted at some values only; returns why a value is refused.
    Check(fn(&Value) -> Option<String>),
}

use Rule::{Check, DefaultOnly, Honoured, Inert};

/// peft's fields, in the order of its sources. `save_pretrained` writes all
/// of them except `runtime_config`, which `LoraConfig.to_dict` drops.
const FIELDS: &[(&str, Rule)] = &[
    // PeftConfigMixin / PeftConfig
    ("task_type", Check(task_type)),
    ("peft_type", Honoured),
    // Which transformers class rebuilds the base; ours is fixed.
    ("auto_mapping", Inert),
    ("peft_version", Inert),
    // Names from the training machine: the tensors' shapes are checked
    // against the served base instead.
    ("base_model_name_or_path", Inert),
    ("revision", Inert),
    // Only freezes parameters; save_pretrained always writes true.
    ("inference_mode", Inert),
    // LoraConfig
    ("r", Honoured),
    ("target_modules", Honoured),
    (
        "exclude_modules",
        DefaultOnly(
            "it leaves some matches of target_modules without an adapter, while the engine applies one to every layer of each target module",
        ),
    ),
    ("lora_alpha", Honoured),
    // Dropout acts only while training.
    ("lora_dropout", Inert),
    (
        "fan_in_fan_out",
        DefaultOnly(
            "the weights are stored transposed, (fan_in, fan_out) as for GPT-2's Conv1D; the engine reads them as (out, in)",
        ),
    ),
    ("bias", Check(bias)),
    (
        "use_rslora",
        DefaultOnly(
            "rank-stabilised LoRA scales by lora_alpha/sqrt(r); the engine scales by lora_alpha/r",
        ),
    ),
    (
        "modules_to_save",
        DefaultOnly(
            "whole modules (such as lm_head) were trained and saved beside the adapter; the engine loads only lora_A and lora_B",
        ),
    ),
    ("init_lora_weights", Check(init_lora_weights)),
    (
        "layers_to_transform",
        DefaultOnly("the adapter covers only some layers; the engine applies one to every layer"),
    ),
    // Only read together with layers_to_transform, refused when set.
    ("layers_pattern", Inert),
    (
        "rank_pattern",
        DefaultOnly("it gives some layers another rank; the engine uses the one `r` everywhere"),
    ),
    (
        "alpha_pattern",
        DefaultOnly(
            "it gives some layers another alpha; the engine uses the one `lora_alpha` everywhere",
        ),
    ),
    (
        "megatron_config",
        DefaultOnly(
            "the adapter was built for Megatron's parallel linear layers, not this model's linear layers",
        ),
    ),
    // The Megatron module path; only read with megatron_config.
    ("megatron_core", Inert),
    (
        "trainable_token_indices",
        DefaultOnly(
            "rows of the token embeddings were trained and saved with the adapter; the engine loads only lora_A and lora_B",
        ),
    ),
    (
        "loftq_config",
        DefaultOnly(
            "LoftQ replaces the base weights with a quantised version and fits the adapter to it (peft empties this field when LoftQ did not run), so the adapter only fits that modified base",
        ),
    ),
    // EVA only chooses lora_A's starting values; a rank redistribution it
    // makes is saved as rank_pattern, which is checked.
    ("eva_config", Inert),
    (
        "corda_config",
        DefaultOnly(
            "CorDA rewrites the base weights (peft's corda_init), so an adapter trained with it fits only that modified base; if it was converted to plain LoRA (save_pretrained with path_initial_model_for_weight_conversion), set corda_config to null",
        ),
    ),
    (
        "lora_ga_config",
        DefaultOnly(
            "LoRA-GA subtracts an offset from the base weights (peft's lora_ga_init), so an adapter trained with it fits only that modified base; if it was converted to plain LoRA (save_pretrained with path_initial_model_for_weight_conversion), set lora_ga_config to null",
        ),
    ),
    (
        "use_dora",
        DefaultOnly(
            "DoRA adds a learned magnitude per output (lora_magnitude_vector) and renormalises the weight; the engine merges plain B·A",
        ),
    ),
    (
        "velora_config",
        DefaultOnly(
            "VeLoRA changes only training (outside training peft's forward is plain LoRA) but saves its `lora_velora_embed` buffers with the adapter, which the engine does not take; export with velora_config null and without them",
        ),
    ),
    (
        "alora_invocation_tokens",
        DefaultOnly(
            "activated LoRA applies the adapter only from the invocation tokens on (peft cannot merge it), while the engine merges it into the weights for every token",
        ),
    ),
    (
        "use_qalora",
        DefaultOnly(
            "QA-LoRA averages the input in groups of qalora_group_size before lora_A; the engine applies lora_A to the whole input",
        ),
    ),
    // Only read when use_qalora is on.
    ("qalora_group_size", Inert),
    (
        "monteclora_config",
        DefaultOnly(
            "MonteCLoRA samples only while training (at inference peft's forward is plain LoRA) but saves its sampler's parameters with the adapter, which the engine does not take; export with monteclora_config null and without them",
        ),
    ),
    (
        "layer_replication",
        DefaultOnly(
            "it builds a deeper model by repeating base layers, each with its own adapter; the engine serves the base's own layers",
        ),
    ),
    // Runtime settings only (ephemeral_gpu_offload); never saved.
    ("runtime_config", Inert),
    (
        "lora_bias",
        DefaultOnly("lora_B has a trained bias; the engine merges B·A without it"),
    ),
    (
        "target_parameters",
        DefaultOnly(
            "LoRA on raw parameters (such as mixture-of-experts weights) instead of linear modules; the engine adapts only the target_modules",
        ),
    ),
    (
        "use_bdlora",
        DefaultOnly(
            "BD-LoRA makes lora_A or lora_B block-diagonal; the engine expects dense factors",
        ),
    ),
    (
        "arrow_config",
        DefaultOnly(
            "Arrow routes each token among several task adapters; the engine applies one adapter to every token",
        ),
    ),
    (
        "kasa_config",
        DefaultOnly(
            "KaSA truncates singular components of the base weights and puts a learned diagonal between lora_A and lora_B; the engine does neither",
        ),
    ),
    // Only ties adapters of modules tied to the embeddings, which lie in
    // modules_to_save or trainable_token_indices (refused) or in target
    // modules the engine does not adapt (refused by name).
    ("ensure_weight_tying", Inert),
];

/// Unset means peft's default: null, false, or an empty string, list or map.
pub(super) fn is_set(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => *flag,
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
        Value::Number(_) => true,
    }
}

fn task_type(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(task) if task == "CAUSAL_LM" => None,
        other => Some(format!(
            "`task_type` is {other}: peft builds another model class for it, with a task head the engine does not have; only CAUSAL_LM (or null) is served"
        )),
    }
}

fn bias(value: &Value) -> Option<String> {
    match value.as_str() {
        Some("none") => None,
        _ => Some(format!(
            "`bias` is {value}: the base layers' biases were trained and saved with the adapter; the engine applies only B·A (use \"none\")"
        )),
    }
}

/// Initialisations that rewrite the base layer's weight in peft 0.21.2
/// (`pissa_init`, `olora_init`, `corda_init`, `loftq_init`, `lora_ga_init`
/// assign `base_layer.weight`): the trained adapter fits only that base.
/// `True`, `False`, "gaussian", "eva" and "orthogonal" only set lora_A and
/// lora_B's starting values; "mica" also freezes lora_B while training, and
/// its variant's forward and merge are plain LoRA. A converted adapter
/// (`path_initial_model_for_weight_conversion`) is saved with `true`.
fn init_lora_weights(value: &Value) -> Option<String> {
    let rewrites_base = |init: &str| {
        init.starts_with("pissa") || matches!(init, "olora" | "corda" | "loftq" | "lora_ga")
    };
    match value {
        Value::Bool(_) => None,
        Value::String(init)
            if matches!(init.as_str(), "gaussian" | "eva" | "orthogonal" | "mica") =>
        {
            None
        }
        Value::String(init) if rewrites_base(init) => Some(format!(
            "`init_lora_weights` is \"{init}\": this initialisation rewrites the base weights, so the adapter fits only that modified base; convert it to plain LoRA first (peft's save_pretrained with path_initial_model_for_weight_conversion, which saves init_lora_weights = true)"
        )),
        other => Some(format!(
            "`init_lora_weights` is {other}, which this gateway does not know; it may change the base weights"
        )),
    }
}

/// The first field of `config` that the engine would not honour, and why.
pub(super) fn refused_option(config: &Map<String, Value>) -> Option<String> {
    for (name, value) in config {
        match FIELDS.iter().find(|(field, _)| field == name) {
            Some((_, Honoured | Inert)) => {}
            Some((_, DefaultOnly(why))) if is_set(value) => {
                return Some(format!("`{name}` is set: {why}"));
            }
            Some((_, DefaultOnly(_))) => {}
            Some((_, Check(check))) => {
                if let Some(why) = check(value) {
                    return Some(why);
                }
            }
            None if is_set(value) => {
                return Some(format!(
                    "`{name}` is not a field of peft 0.21.2's LoraConfig and is set; the engine would ignore it"
                ));
            }
            None => {}
        }
    }
    None
}

#[cfg(test)]
pub(super) fn refused_fields() -> Vec<&'static str> {
    FIELDS
        .iter()
        .filter(|(_, rule)| matches!(rule, DefaultOnly(_)))
        .map(|(name, _)| *name)
        .collect()
}

#[cfg(test)]
pub(super) fn known_fields() -> Vec<&'static str> {
    FIELDS.iter().map(|(name, _)| *name).collect()
}
