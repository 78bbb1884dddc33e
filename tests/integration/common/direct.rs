//! Engines driven directly, without HTTP: what the reference tests compare.

use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use loragate::config::Config;
use loragate::engine::{
    AdapterFiles, Engine, InferenceEvent, InferenceRequest, PromptMessage, Role,
};
use loragate::fixture::lora::AdapterSpec;

/// The model folder `dir` served as `name` by `engine` (`mistralrs`,
/// `shared_base`), with a 2,048-token context.
pub async fn engine_on(dir: &Path, name: &str, engine: &str) -> Arc<dyn Engine> {
    let text = format!(
        "[model]\nserved_name = \"{name}\"\npath = \"{}\"\nformat = \"safetensors\"\ndtype = \"f32\"\nengine = \"{engine}\"\ncontext_length = 2048\n",
        dir.display()
    );
    let config = Config::from_toml_str(&text, Vec::new(), Path::new("/")).unwrap();
    loragate::server::load_engine(&config.model, loragate::engine::EngineMetrics::detached())
        .await
        .expect("model loads")
}

/// The greedy answer of `model` to one user message, as the engine sent it.
pub async fn greedy(engine: &dyn Engine, model: &str, prompt: &str, max_tokens: usize) -> String {
    let messages = vec![PromptMessage::text(Role::User, prompt)];
    let prompt = engine
        .count_prompt_tokens(model, &messages, None)
        .await
        .unwrap();
    let request = InferenceRequest::greedy(model, messages, prompt, max_tokens);
    let mut stream = engine.generate(request).await.unwrap().events;
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            InferenceEvent::Delta { text: piece, .. } => text.push_str(&piece),
            InferenceEvent::Finished { .. } => break,
            // Only remote engines report parsed calls.
            InferenceEvent::ToolCall(_) => {}
        }
    }
    text
}

/// The engine's view of an adapter written from `spec` into `dir`.
pub fn adapter_files(dir: &Path, spec: &AdapterSpec) -> AdapterFiles {
    AdapterFiles {
        weights: dir.join("adapter_model.safetensors"),
        rank: spec.rank,
        alpha: spec.alpha,
        target_modules: spec.targets.clone(),
    }
}
