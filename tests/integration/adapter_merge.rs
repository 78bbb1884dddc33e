//! Proof that an adapter is really applied: greedy output with the adapter
//! differs from the base and equals, token for token, the output of a model
//! whose weights were merged independently (W + alpha/r · B·A, computed by
//! the project's own code, not the engine's).

use crate::common;

use std::path::Path;

use std::sync::Arc;

use crate::common::direct::{self, adapter_files as files};
use loragate::engine::{Engine, PromptMessage, Role};
use loragate::fixture::lora::{AdapterSpec, write_adapter, write_merged_model};

/// The tiny model's merges are checked on mistral.rs, whose LoRA route is
/// the verified-exact one.
async fn engine_on(dir: &Path, name: &str) -> Arc<dyn Engine> {
    direct::engine_on(dir, name, "mistralrs").await
}

async fn greedy(engine: &Arc<dyn Engine>, model: &str, prompt: &str) -> String {
    direct::greedy(engine.as_ref(), model, prompt, 24).await
}

#[tokio::test(flavor = "multi_thread")]
async fn adapter_output_equals_an_independent_merge_and_differs_from_the_base() {
    let base_dir = common::tiny_model_dir();
    let work = tempfile::tempdir().unwrap();
    let prompts = ["Hello there", "Tell me a story", "What is 2+2?"];
    let engine = engine_on(base_dir, "tiny").await;
    let mut differing = 0;
    for (index, spec) in [
        AdapterSpec::tiny(11),
        AdapterSpec {
            targets: vec![
                "q_proj".into(),
                "k_proj".into(),
                "v_proj".into(),
                "o_proj".into(),
                "gate_proj".into(),
                "up_proj".into(),
                "down_proj".into(),
            ],
            rank: 4,
            alpha: 8.0,
            seed: 12,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let adapter_dir = work.path().join(format!("adapter-{index}"));
        write_adapter(&adapter_dir, &loragate::fixture::TINY, &spec).unwrap();
        let merged_dir = work.path().join(format!("merged-{index}"));
        write_merged_model(base_dir, &adapter_dir, &merged_dir).unwrap();
        let id = format!("tiny-adapter-{index}");
        engine
            .load_adapter(&id, &files(&adapter_dir, &spec))
            .await
            .expect("adapter loads");
        let merged = engine_on(&merged_dir, "merged").await;
        for prompt in prompts {
            let base = greedy(&engine, "tiny", prompt).await;
            let with_adapter = greedy(&engine, &id, prompt).await;
            let reference = greedy(&merged, "merged", prompt).await;
            assert_eq!(
                with_adapter, reference,
                "adapter {index}, prompt {prompt:?}"
            );
            if with_adapter != base {
                differing += 1;
            }
        }
    }
    assert!(
        differing >= 4,
        "the adapters change the output ({differing} of 6 differ)"
    );
    // A second adapter on the same engine did not pick up the first one (0.8.1's thread-local list).
}

#[tokio::test(flavor = "multi_thread")]
async fn unloading_an_adapter_stops_serving_it() {
    let engine = engine_on(common::tiny_model_dir(), "tiny").await;
    let work = tempfile::tempdir().unwrap();
    let spec = AdapterSpec::tiny(21);
    write_adapter(work.path(), &loragate::fixture::TINY, &spec).unwrap();
    engine
        .load_adapter("gone-soon", &files(work.path(), &spec))
        .await
        .unwrap();
    assert!(engine.model("gone-soon").is_some());
    engine.unload_adapter("gone-soon").await.unwrap();
    assert!(engine.model("gone-soon").is_none());
    let messages = vec![PromptMessage::text(Role::User, "hi")];
    assert!(
        engine
            .count_prompt_tokens("gone-soon", &messages, None)
            .await
            .is_err()
    );
    assert!(!greedy(&engine, "tiny", "still here").await.is_empty());
}
