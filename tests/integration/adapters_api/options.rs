//! Which adapter options are served and which refused, over HTTP: a config
//! exactly as peft 0.21.2 saves it is served; every option the engine would
//! not honour, and non-finite weights, get a 400 naming what is wrong.

use serde_json::{Value, json};

use super::common::{MODEL, TestServer, client, tiny_adapter};
use super::{answer, files_of, form};

/// `adapter_config.json` as peft 0.21.2's `save_pretrained` writes it for
/// r=8 on q_proj/v_proj (`tests/fixtures/peft-0.21.2/derive.py`).
const PEFT_CONFIG: &str = include_str!("../../fixtures/peft-0.21.2/adapter_config.json");

async fn post(server: &TestServer, config: Vec<u8>, weights: Vec<u8>) -> (u16, Value) {
    let response = client()
        .post(server.url("/admin/v1/tenants/anonymous/adapters"))
        .multipart(form("bot", config, weights))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn peft_config_with(field: &str, value: Value) -> Vec<u8> {
    let mut config: Value = serde_json::from_str(PEFT_CONFIG).unwrap();
    config[field] = value;
    serde_json::to_vec(&config).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_as_peft_saves_it_is_served() {
    let server = TestServer::start();
    let dir = tiny_adapter(141);
    let (_, weights) = files_of(dir.path());
    let (status, info) = post(&server, PEFT_CONFIG.as_bytes().to_vec(), weights).await;
    assert_eq!(status, 201, "{info}");
    assert_eq!(
        (&info["rank"], &info["alpha"], &info["target_modules"]),
        (&json!(8), &json!(16.0), &json!(["q_proj", "v_proj"]))
    );
    let (status, with_adapter) = answer(&server, "bot").await;
    assert_eq!(status, 200);
    assert_ne!(with_adapter, answer(&server, MODEL).await.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_option_the_engine_would_not_honour_is_refused_by_name() {
    let server = TestServer::start();
    let dir = tiny_adapter(142);
    let (_, weights) = files_of(dir.path());
    // Each with a value peft itself would write for it.
    let cases: Vec<(&str, Value)> = vec![
        ("alora_invocation_tokens", json!([32, 1045, 4729])),
        ("use_dora", json!(true)),
        ("use_rslora", json!(true)),
        ("rank_pattern", json!({"q_proj": 4})),
        ("alpha_pattern", json!({"v_proj": 32})),
        ("fan_in_fan_out", json!(true)),
        ("modules_to_save", json!(["lm_head"])),
        ("layers_to_transform", json!([0])),
        ("layers_to_transform", json!(0)),
        ("lora_bias", json!(true)),
        ("bias", json!("all")),
        ("bias", json!("lora_only")),
        (
            "exclude_modules",
            json!(["model.layers.0.self_attn.q_proj"]),
        ),
        ("trainable_token_indices", json!([5, 6])),
        ("use_qalora", json!(true)),
        (
            "velora_config",
            json!({"num_groups": 8, "scale": 1.0, "init_type": "batch_average"}),
        ),
        ("monteclora_config", json!({"num_samples": 4})),
        (
            "arrow_config",
            json!({"top_k": 3, "router_temperature": 1.0}),
        ),
        ("kasa_config", json!({"beta": 0.0001, "gamma": 0.001})),
        (
            "use_bdlora",
            json!({"nblocks": 2, "target_modules_bd_a": ["q_proj"]}),
        ),
        ("layer_replication", json!([[0, 2], [1, 2]])),
        ("target_parameters", json!(["mlp.experts.gate_up_proj"])),
        ("megatron_config", json!({"tensor_model_parallel_size": 2})),
        ("corda_config", json!({"corda_method": "ipm"})),
        (
            "lora_ga_config",
            json!({"direction": "ArB2r", "scale": "stable"}),
        ),
        ("loftq_config", json!({"loftq_bits": 4, "loftq_iter": 1})),
        ("init_lora_weights", json!("pissa")),
        ("init_lora_weights", json!("pissa_niter_16")),
        ("init_lora_weights", json!("olora")),
        ("init_lora_weights", json!("corda")),
        ("init_lora_weights", json!("loftq")),
        ("init_lora_weights", json!("lora_ga")),
        ("task_type", json!("SEQ_CLS")),
        ("a_field_from_a_newer_peft", json!(true)),
    ];
    for (field, value) in cases {
        let (status, body) = post(
            &server,
            peft_config_with(field, value.clone()),
            weights.clone(),
        )
        .await;
        assert_eq!(status, 400, "{field}={value} is refused: {body}");
        let error = &body["error"];
        assert_eq!(
            (&error["code"], &error["type"], &error["param"]),
            (
                &json!("invalid_adapter"),
                &json!("invalid_request_error"),
                &json!("adapter_config")
            ),
            "{field}"
        );
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{field}`")),
            "{field}: {message}"
        );
    }
    let list: Value =
        super::common::get_json(server.url("/admin/v1/tenants/anonymous/adapters"), None).await;
    assert_eq!(list["data"], json!([]), "nothing was stored");
}

/// Overwrites element 0 of `tensor` in a safetensors file with `value`.
fn poison(weights: &mut [u8], tensor: &str, value: &[u8]) {
    let (header, metadata) = safetensors::SafeTensors::read_metadata(weights).unwrap();
    let start = 8 + header + metadata.tensors()[tensor].data_offsets.0;
    weights[start..start + value.len()].copy_from_slice(value);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adapter_with_non_finite_weights_is_refused_naming_the_tensor() {
    let server = TestServer::start();
    let dir = tiny_adapter(143);
    let (config, weights) = files_of(dir.path());
    for tensor in [
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",
    ] {
        for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut poisoned = weights.clone();
            poison(&mut poisoned, tensor, &value.to_le_bytes());
            let (status, body) = post(&server, config.clone(), poisoned).await;
            assert_eq!(status, 400, "{tensor} {value}");
            assert_eq!(body["error"]["code"], "invalid_adapter");
            assert_eq!(body["error"]["param"], "adapter_model");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("`{tensor}`")) && message.contains("non-finite"),
                "{message}"
            );
        }
    }
    // The same file unpoisoned is fine.
    assert_eq!(post(&server, config, weights).await.0, 201);
}
