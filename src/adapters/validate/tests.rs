//! Unit tests of `validate`.

use super::*;
use crate::fixture::lora::{AdapterSpec, adapter_config, write_adapter};

const TINY_SHAPE: BaseShape = BaseShape {
    hidden: 64,
    intermediate: 128,
    layers: 2,
    heads: 4,
    kv_heads: 2,
};
const LIMITS: Limits = Limits {
    max_rank: 16,
    max_bytes: 10 * 1024 * 1024,
};

fn files(spec: &AdapterSpec) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    write_adapter(dir.path(), &crate::fixture::TINY, spec).unwrap();
    (
        std::fs::read(dir.path().join("adapter_config.json")).unwrap(),
        std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap(),
    )
}

fn message(result: Result<ValidatedAdapter, AdapterError>) -> String {
    result.expect_err("should be refused").to_string()
}

fn with_config(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut config = adapter_config(&AdapterSpec::tiny(1), "tiny");
    edit(&mut config);
    serde_json::to_vec(&config).unwrap()
}

#[test]
fn a_peft_adapter_with_all_its_null_fields_is_accepted() {
    let (config, weights) = files(&AdapterSpec::tiny(1));
    let validated = validate(&config, &weights, &TINY_SHAPE, &LIMITS).unwrap();
    assert_eq!(validated.rank, 8);
    assert_eq!(
        validated.target_modules,
        vec!["q_proj".to_string(), "v_proj".to_string()]
    );
    assert_eq!(validated.sha256.len(), 64);
}

#[test]
fn config_problems_are_named() {
    let (_, weights) = files(&AdapterSpec::tiny(1));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "not valid JSON"),
        (with_config(|c| c["peft_type"] = "IA3".into()), "peft_type"),
        (with_config(|c| c["r"] = 64.into()), "exceeds the maximum"),
        (
            with_config(|c| c["target_modules"] = serde_json::json!(["q_proj", "wq"])),
            "`wq` does not exist",
        ),
        (with_config(|c| c["use_dora"] = true.into()), "use_dora"),
        (
            with_config(|c| c["modules_to_save"] = serde_json::json!(["lm_head"])),
            "modules_to_save",
        ),
        (
            with_config(|c| c["rank_pattern"] = serde_json::json!({"q_proj": 4})),
            "rank_pattern",
        ),
        (
            with_config(|c| c["target_modules"] = ".*proj".into()),
            "regular expression",
        ),
    ];
    for (config, expected) in cases {
        let text = message(validate(&config, &weights, &TINY_SHAPE, &LIMITS));
        assert!(
            text.contains(expected),
            "{text:?} should mention {expected:?}"
        );
    }
}

#[test]
fn tensors_must_match_the_base() {
    let (config, _) = files(&AdapterSpec::tiny(1));
    assert!(
        message(validate(&config, b"garbage", &TINY_SHAPE, &LIMITS))
            .contains("not a valid safetensors")
    );
    // Shapes for another model (hidden 128).
    let other = BaseShape {
        hidden: 128,
        ..TINY_SHAPE
    };
    let (config, weights) = files(&AdapterSpec::tiny(1));
    assert!(message(validate(&config, &weights, &other, &LIMITS)).contains("needs"));
    // Weights for more modules than the config declares.
    let (_, all_modules) = files(&AdapterSpec {
        targets: vec!["q_proj".into(), "v_proj".into(), "k_proj".into()],
        ..AdapterSpec::tiny(1)
    });
    assert!(
        message(validate(&config, &all_modules, &TINY_SHAPE, &LIMITS))
            .contains("unexpected tensor")
    );
    // Fewer tensors than declared.
    let (_, q_only) = files(&AdapterSpec {
        targets: vec!["q_proj".into()],
        ..AdapterSpec::tiny(1)
    });
    assert!(message(validate(&config, &q_only, &TINY_SHAPE, &LIMITS)).contains("missing"));
}

#[test]
fn size_cap_is_enforced() {
    let (config, weights) = files(&AdapterSpec::tiny(1));
    let small = Limits {
        max_rank: 16,
        max_bytes: 100,
    };
    assert!(matches!(
        validate(&config, &weights, &TINY_SHAPE, &small),
        Err(AdapterError::TooLarge { .. })
    ));
}

/// What peft 0.21.2's `save_pretrained` writes for r=8 on q_proj/v_proj.
const PEFT_CONFIG: &[u8] =
    include_bytes!("../../../tests/fixtures/peft-0.21.2/adapter_config.json");

fn peft_config_with(field: &str, value: Value) -> Vec<u8> {
    let mut config: Value = serde_json::from_slice(PEFT_CONFIG).unwrap();
    config[field] = value;
    serde_json::to_vec(&config).unwrap()
}

#[test]
fn a_config_exactly_as_peft_saves_it_is_accepted() {
    let (_, weights) = files(&AdapterSpec::tiny(1));
    let validated = validate(PEFT_CONFIG, &weights, &TINY_SHAPE, &LIMITS).unwrap();
    assert_eq!(validated.rank, 8);
    assert_eq!(validated.alpha, 16.0);
    assert_eq!(validated.target_modules, vec!["q_proj", "v_proj"]);
}

#[test]
fn the_table_names_every_field_peft_saves() {
    let config: Value = serde_json::from_slice(PEFT_CONFIG).unwrap();
    let saved = config.as_object().unwrap();
    assert_eq!(saved.len(), 41);
    let known = peft::known_fields();
    for field in saved.keys() {
        assert!(
            known.contains(&field.as_str()),
            "{field} is not in the table"
        );
    }
    // Plus runtime_config, which to_dict drops.
    assert_eq!(known.len(), 42);
}

#[test]
fn every_option_the_engine_would_not_honour_is_refused_by_name() {
    let (_, weights) = files(&AdapterSpec::tiny(1));
    let refused = peft::refused_fields();
    assert_eq!(refused.len(), 23);
    for field in refused {
        for value in [
            serde_json::json!(true),
            serde_json::json!([3]),
            serde_json::json!({"k": 1}),
        ] {
            let config = peft_config_with(field, value.clone());
            let text = message(validate(&config, &weights, &TINY_SHAPE, &LIMITS));
            assert!(
                text.contains(&format!("`{field}` is set")),
                "{field}={value}: {text}"
            );
        }
    }
    let checked: Vec<(&str, Value)> = vec![
        ("task_type", "SEQ_CLS".into()),
        ("bias", "all".into()),
        ("bias", "lora_only".into()),
        ("init_lora_weights", "pissa".into()),
        ("init_lora_weights", "pissa_niter_4".into()),
        ("init_lora_weights", "olora".into()),
        ("init_lora_weights", "corda".into()),
        ("init_lora_weights", "loftq".into()),
        ("init_lora_weights", "lora_ga".into()),
        ("init_lora_weights", "something_new".into()),
        ("some_field_of_a_newer_peft", true.into()),
        ("some_field_of_a_newer_peft", 4.into()),
    ];
    for (field, value) in checked {
        let config = peft_config_with(field, value.clone());
        let text = message(validate(&config, &weights, &TINY_SHAPE, &LIMITS));
        assert!(
            text.contains(&format!("`{field}`")),
            "{field}={value}: {text}"
        );
    }
}

#[test]
fn inert_options_are_accepted_at_any_value() {
    let (_, weights) = files(&AdapterSpec::tiny(1));
    let accepted: Vec<(&str, Value)> = vec![
        ("task_type", Value::Null),
        ("lora_dropout", 0.3.into()),
        ("inference_mode", false.into()),
        ("peft_version", "0.17.0".into()),
        ("revision", "main".into()),
        ("base_model_name_or_path", Value::Null),
        (
            "auto_mapping",
            serde_json::json!({"base_model_class": "LlamaForCausalLM", "parent_library": "transformers.models.llama.modeling_llama"}),
        ),
        ("megatron_core", "megatron.core.custom".into()),
        ("qalora_group_size", 64.into()),
        ("layers_pattern", "layers".into()),
        ("eva_config", serde_json::json!({"rho": 2.0, "tau": 0.99})),
        (
            "runtime_config",
            serde_json::json!({"ephemeral_gpu_offload": true}),
        ),
        ("ensure_weight_tying", true.into()),
        ("loftq_config", Value::Null),
        ("init_lora_weights", false.into()),
        ("init_lora_weights", "gaussian".into()),
        ("init_lora_weights", "eva".into()),
        ("init_lora_weights", "orthogonal".into()),
        ("init_lora_weights", "mica".into()),
        ("some_field_of_a_newer_peft", Value::Null),
        ("some_field_of_a_newer_peft", false.into()),
        ("some_field_of_a_newer_peft", serde_json::json!({})),
    ];
    for (field, value) in accepted {
        let config = peft_config_with(field, value.clone());
        assert!(
            validate(&config, &weights, &TINY_SHAPE, &LIMITS).is_ok(),
            "{field}={value}"
        );
    }
}

/// Every tensor the tiny base needs for r=8 q/v, zero-filled in `dtype`,
/// with `poison` written over element 5 of `target`.
fn weights_in(dtype: Dtype, target: &str, poison: &[u8]) -> Vec<u8> {
    let width = poison.len();
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for layer in 0..TINY_SHAPE.layers {
        for module in ["q_proj", "v_proj"] {
            let (input, output) = TINY_SHAPE.dims(module).unwrap();
            let prefix = BaseShape::lora_prefix(layer, module);
            for (name, shape) in [
                (format!("{prefix}.lora_A.weight"), vec![8, input]),
                (format!("{prefix}.lora_B.weight"), vec![output, 8]),
            ] {
                let mut data = vec![0u8; shape.iter().product::<usize>() * width];
                if name == target {
                    data[5 * width..6 * width].copy_from_slice(poison);
                }
                buffers.push((name, shape, data));
            }
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = buffers
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let config = with_config(|_| {});
    let target = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
    let cases: Vec<(Dtype, Vec<u8>)> = vec![
        (Dtype::F32, f32::NAN.to_le_bytes().to_vec()),
        (Dtype::F32, f32::INFINITY.to_le_bytes().to_vec()),
        (Dtype::F32, f32::NEG_INFINITY.to_le_bytes().to_vec()),
        (Dtype::F16, 0x7e00u16.to_le_bytes().to_vec()),
        (Dtype::F16, 0x7c00u16.to_le_bytes().to_vec()),
        (Dtype::F16, 0xfc00u16.to_le_bytes().to_vec()),
        (Dtype::BF16, 0x7fc0u16.to_le_bytes().to_vec()),
        (Dtype::BF16, 0x7f80u16.to_le_bytes().to_vec()),
        (Dtype::BF16, 0xff80u16.to_le_bytes().to_vec()),
    ];
    for (dtype, poison) in cases {
        let text = message(validate(
            &config,
            &weights_in(dtype, target, &poison),
            &TINY_SHAPE,
            &LIMITS,
        ));
        assert!(
            text.contains(&format!("`{target}`"))
                && text.contains("non-finite")
                && text.contains("element 5"),
            "{dtype:?} {poison:?}: {text}"
        );
    }
    // The largest finite values are fine.
    for (dtype, largest) in [
        (Dtype::F32, f32::MAX.to_le_bytes().to_vec()),
        (Dtype::F16, 0x7bffu16.to_le_bytes().to_vec()),
        (Dtype::BF16, 0xff7fu16.to_le_bytes().to_vec()),
    ] {
        assert!(
            validate(
                &config,
                &weights_in(dtype, target, &largest),
                &TINY_SHAPE,
                &LIMITS
            )
            .is_ok()
        );
    }
}

#[test]
fn a_streamed_file_is_validated_from_disk() {
    let (config, weights) = files(&AdapterSpec::tiny(1));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter_model.safetensors");
    std::fs::write(&path, &weights).unwrap();
    let received = Received {
        sha256: "streamed".into(),
        size: weights.len() as u64,
    };
    let validated = validate_file(&config, &path, &received, &TINY_SHAPE, &LIMITS).unwrap();
    assert_eq!(
        (validated.sha256.as_str(), validated.size_bytes),
        ("streamed", weights.len() as u64)
    );
    let short = Received {
        size: 3,
        ..received
    };
    assert!(validate_file(&config, &path, &short, &TINY_SHAPE, &LIMITS).is_err());
    // An empty part is an invalid file, not an I/O failure.
    std::fs::write(&path, b"").unwrap();
    let empty = Received {
        sha256: String::new(),
        size: 0,
    };
    let text = message(validate_file(&config, &path, &empty, &TINY_SHAPE, &LIMITS));
    assert!(text.contains("not a valid safetensors"), "{text}");
}
