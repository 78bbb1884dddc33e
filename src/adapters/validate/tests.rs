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
