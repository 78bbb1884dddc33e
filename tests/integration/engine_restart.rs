//! When mistral.rs's engine thread dies (a panic inside it, as issue 18's KV
//! cache bug caused), mistral.rs starts a new one on the next request and
//! every request the old one held loses its response channel. The gateway
//! must tell that from a normal end: requests that have sent their client
//! nothing yet run again once on the new engine; streams already under way
//! end with the OpenAI error event; every one is metered and counted.
//!
//! The failure is real: a request of the test's own, sent to the same
//! engine, carries a logits processor that holds the engine thread inside
//! its sampler (so the test can place other requests exactly: some mid-stream,
//! some queued in the engine) and then panics it.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::common::{MODEL, TestServer, metric, settled_metric, sse_data};
use async_trait::async_trait;
use futures_util::StreamExt;
use loragate::engine::mistral::MistralEngine;
use loragate::engine::{
    AdapterFiles, Engine, EngineError, InferenceRequest, InferenceStream, ModelCard, PromptMessage,
    PromptTokens,
};
use mistralrs::core::RequestMessage;
use mistralrs::{CustomLogitsProcessor, NormalRequest, Request, SamplingParams, Tensor};
use serde_json::{Value, json};

/// The real engine, counting generations it has handed to mistral.rs.
struct Counting {
    inner: Arc<MistralEngine>,
    sent: Arc<AtomicUsize>,
}

#[async_trait]
impl Engine for Counting {
    fn models(&self) -> Vec<ModelCard> {
        self.inner.models()
    }
    async fn count_prompt_tokens(
        &self,
        model: &str,
        messages: &[PromptMessage],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<PromptTokens, EngineError> {
        self.inner.count_prompt_tokens(model, messages, tools).await
    }
    async fn generate(&self, request: InferenceRequest) -> Result<InferenceStream, EngineError> {
        let started = self.inner.generate(request).await;
        self.sent.fetch_add(1, Ordering::SeqCst);
        started
    }
    async fn load_adapter(&self, id: &str, adapter: &AdapterFiles) -> Result<u64, EngineError> {
        self.inner.load_adapter(id, adapter).await
    }
    async fn unload_adapter(&self, id: &str) -> Result<(), EngineError> {
        self.inner.unload_adapter(id).await
    }
}

/// Holds the engine thread in its sampler until released, then panics it.
#[derive(Default)]
struct Trap {
    state: Mutex<(bool, bool)>, // (entered, released)
    changed: Condvar,
}

impl Trap {
    fn wait_entered(&self) {
        let mut state = self.state.lock().unwrap();
        while !state.0 {
            state = self.changed.wait(state).unwrap();
        }
    }
    fn release(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

struct TrapProcessor(Arc<Trap>);

impl CustomLogitsProcessor for TrapProcessor {
    fn apply(&self, _logits: &Tensor, _context: &[u32]) -> mistralrs::Result<Tensor> {
        let mut state = self.0.state.lock().unwrap();
        state.0 = true;
        self.0.changed.notify_all();
        while !state.1 {
            state = self.0.changed.wait(state).unwrap();
        }
        drop(state);
        panic!("injected engine failure (tests/engine_restart.rs)");
    }
}

fn ascii_only_bias() -> Value {
    let mut bias = serde_json::Map::new();
    for id in 128..=258u32 {
        bias.insert(id.to_string(), json!(-100));
    }
    Value::Object(bias)
}

fn body(content: &str, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 256,
        "temperature": 0,
        // ASCII only and no end of turn: every token is one byte of text,
        // and nothing ends before the engine is made to fail.
        "logit_bias": ascii_only_bias(),
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
    })
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dying_engine_retries_what_sent_nothing_and_ends_streams_with_an_error() {
    let engine: Arc<OnceLock<Arc<MistralEngine>>> = Arc::new(OnceLock::new());
    let sent = Arc::new(AtomicUsize::new(0));
    let (kept, counter) = (engine.clone(), sent.clone());
    let server = TestServer::with_loader(
        "",
        &[
            ("model.engine", "mistralrs"),
            ("model.max_num_seqs", "16"),
            ("admission.max_in_flight", "16"),
        ],
        move |model, metrics| {
            Box::pin(async move {
                let loaded = Arc::new(
                    MistralEngine::load(&model, metrics.sampled_tokens)
                        .await
                        .expect("loads"),
                );
                let _ = kept.set(loaded.clone());
                Arc::new(Counting {
                    inner: loaded,
                    sent: counter,
                }) as Arc<dyn Engine>
            })
        },
    );
    let mistral = engine.get().expect("engine loaded").clone();
    let http = common::client();
    let url = server.url("/v1/chat/completions");

    // 1. Streams under way: each has received text.
    let mut running = Vec::new();
    for i in 0..3 {
        let response = http
            .post(&url)
            .json(&body(&format!("running stream {i}"), true))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut bytes = response.bytes_stream();
        let mut received = String::new();
        let has_text = |received: &str| {
            sse_data(received)
                .iter()
                .filter_map(|f| serde_json::from_str::<Value>(f).ok())
                .any(|c| {
                    c["choices"][0]["delta"]["content"]
                        .as_str()
                        .is_some_and(|t| !t.is_empty())
                })
        };
        while !has_text(&received) {
            let chunk = bytes.next().await.expect("stream open").unwrap();
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
        running.push((received, bytes));
    }

    // 2. Hold the engine thread inside its sampler.
    let trap = Arc::new(Trap::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let inner = mistral.mistral().inner();
    let request = NormalRequest {
        logits_processors: Some(vec![Arc::new(TrapProcessor(trap.clone()))]),
        model_id: Some(MODEL.to_string()),
        ..NormalRequest::new_simple(
            RequestMessage::Completion {
                text: "trap".into(),
                echo_prompt: false,
                best_of: None,
            },
            SamplingParams {
                max_len: Some(4),
                ..SamplingParams::deterministic()
            },
            tx,
            inner.next_request_id(),
            None,
            None,
        )
    };
    inner
        .get_sender(Some(MODEL))
        .unwrap()
        .send(Request::Normal(Box::new(request)))
        .await
        .unwrap();
    let waiting = trap.clone();
    tokio::task::spawn_blocking(move || waiting.wait_entered())
        .await
        .unwrap();
    tokio::spawn(async move { while rx.recv().await.is_some() {} });

    // 3. Requests handed to the held engine: they have sent their clients
    // nothing when it dies.
    let before = sent.load(Ordering::SeqCst);
    let queued: Vec<_> = (0..4usize)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let stream = i.is_multiple_of(2);
                let response = http
                    .post(&url)
                    .json(&body(&format!("queued {i}"), stream))
                    .send()
                    .await
                    .unwrap();
                (stream, response.status(), response.text().await.unwrap())
            })
        })
        .collect();
    wait_for("the queued requests to reach the engine", || {
        sent.load(Ordering::SeqCst) >= before + 4
    })
    .await;

    // 4. The engine thread panics.
    trap.release();

    // The streams under way end with the error event, then [DONE].
    let mut received_tokens = 0u64;
    for (mut received, mut bytes) in running {
        while let Some(chunk) = bytes.next().await {
            received.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        let frames = sse_data(&received);
        assert_eq!(
            frames.last().map(String::as_str),
            Some("[DONE]"),
            "{received}"
        );
        let error: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
        assert_eq!(error["error"]["code"], "engine_error", "{received}");
        assert_eq!(error["error"]["type"], "server_error");
        let chunks: Vec<Value> = frames
            .iter()
            .filter_map(|f| serde_json::from_str(f).ok())
            .collect();
        assert!(
            chunks
                .iter()
                .all(|c| c["choices"][0]["finish_reason"].is_null()),
            "a failed stream does not claim to have finished: {received}"
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(text.len() < 256);
        received_tokens += text.len() as u64;
    }

    // The queued requests ran again on the new engine, to the end.
    let mut answered = 0u64;
    for request in queued {
        let (stream, status, text) = request.await.unwrap();
        assert_eq!(status, 200, "{text}");
        let usage = if stream {
            let frames = sse_data(&text);
            assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
            assert!(!text.contains("\"error\""), "{text}");
            let last: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
            last["usage"].clone()
        } else {
            let answer: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(answer["choices"][0]["finish_reason"], "length");
            answer["usage"].clone()
        };
        assert_eq!(usage["completion_tokens"], 256, "{text}");
        answered += 256;
    }
    assert_eq!(
        metric(&server, "loragate_engine_retries_total").await,
        4.0,
        "each queued request was retried once"
    );
    let labels = |reason: &str| {
        format!(
            "loragate_requests_finished_total{{model=\"{MODEL}\",reason=\"{reason}\",tenant=\"anonymous\"}}"
        )
    };
    assert_eq!(metric(&server, &labels("error")).await, 3.0);
    assert_eq!(metric(&server, &labels("length")).await, 4.0);
    // Metered: the full answers, and for each failed stream at least what
    // its client received and at most its budget.
    let metered = settled_metric(
        &server,
        &format!("loragate_completion_tokens_total{{model=\"{MODEL}\",tenant=\"anonymous\"}}"),
        Duration::from_millis(300),
    )
    .await as u64;
    assert!(
        metered >= answered + received_tokens && metered <= answered + 3 * 256,
        "metered {metered}: answered {answered}, failed streams received {received_tokens}"
    );

    // And the restarted engine serves the next request as usual.
    let response = http
        .post(&url)
        .json(&body("after", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
