//! How uploads reach the store, over HTTP: the weights are streamed to a
//! staging file as they arrive (size-capped on the way), a client that goes
//! away leaves nothing behind, and one adapter's slow load holds up no
//! other adapter's upload, delete or rollback.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use loragate::engine::{
    AdapterFiles, Engine, EngineError, InferenceRequest, InferenceStream, ModelCard, PromptMessage,
    PromptTokens,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::common::{TestServer, authed, client, new_key, tiny_adapter};
use super::{files_of, upload_as};

/// The real engine, except that loading an adapter named `slow` first
/// reports itself and then waits until the test opens the gate.
struct GatedEngine {
    inner: Arc<dyn Engine>,
    started: mpsc::UnboundedSender<String>,
    open: watch::Receiver<bool>,
}

#[async_trait]
impl Engine for GatedEngine {
    fn models(&self) -> Vec<ModelCard> {
        self.inner.models()
    }

    fn model(&self, id: &str) -> Option<ModelCard> {
        self.inner.model(id)
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
        self.inner.generate(request).await
    }

    async fn load_adapter(&self, id: &str, adapter: &AdapterFiles) -> Result<u64, EngineError> {
        if id.contains("/slow@") {
            let _ = self.started.send(id.to_string());
            let mut open = self.open.clone();
            let _ = open.wait_for(|open| *open).await;
        }
        self.inner.load_adapter(id, adapter).await
    }

    async fn unload_adapter(&self, id: &str) -> Result<(), EngineError> {
        self.inner.unload_adapter(id).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_load_holds_up_no_other_adapters_writes() {
    let (_, acme_hash) = new_key();
    let (_, globex_hash) = new_key();
    let (admin_key, admin_hash) = new_key();
    let toml = format!(
        "[auth]\nadmin_api_keys = [\"{admin_hash}\"]\n[[tenants]]\nid = \"acme\"\napi_keys = [\"{acme_hash}\"]\n[[tenants]]\nid = \"globex\"\napi_keys = [\"{globex_hash}\"]\n"
    );
    let (started_sender, mut started) = mpsc::unbounded_channel();
    let (gate, open) = watch::channel(false);
    // Without the fix the other writes wait for the slow load to time out.
    let server = TestServer::with_engine(
        &toml,
        &[("adapters.load_timeout_secs", "30")],
        move |inner| {
            Arc::new(GatedEngine {
                inner,
                started: started_sender,
                open,
            })
        },
    );
    let admin = Some(admin_key.as_str());
    let admin_url = |path: &str| server.url(&format!("/admin/v1/tenants/{path}"));
    let (slow_dir, fast_dir, other_dir) = (tiny_adapter(151), tiny_adapter(152), tiny_adapter(153));
    let slow_done = AtomicBool::new(false);
    let slow = async {
        let response = upload_as(&server, admin, "acme", "slow", slow_dir.path(), None).await;
        slow_done.store(true, Ordering::SeqCst);
        response.status().as_u16()
    };
    let meanwhile = async {
        assert_eq!(
            started.recv().await.as_deref(),
            Some("adapter:acme/slow@1"),
            "the slow load has begun and is held"
        );
        let mut statuses = Vec::new();
        // Another tenant's upload and delete.
        let fast = upload_as(&server, admin, "globex", "fast", fast_dir.path(), None).await;
        statuses.push(("globex upload", fast.status().as_u16()));
        let deleted = authed(
            client().delete(admin_url("globex/adapters/fast")),
            &admin_key,
        )
        .send()
        .await
        .unwrap();
        statuses.push(("globex delete", deleted.status().as_u16()));
        // The same tenant's other adapter: upload, replace, roll back.
        for (label, if_match) in [("acme upload", None), ("acme replace", Some(1))] {
            let response =
                upload_as(&server, admin, "acme", "other", other_dir.path(), if_match).await;
            statuses.push((label, response.status().as_u16()));
        }
        let rolled = authed(
            client().post(admin_url("acme/adapters/other/rollback")),
            &admin_key,
        )
        .send()
        .await
        .unwrap();
        statuses.push(("acme rollback", rolled.status().as_u16()));
        // The held generation is not visible yet.
        let hidden = authed(client().get(admin_url("acme/adapters/slow")), &admin_key)
            .send()
            .await
            .unwrap();
        statuses.push(("acme get slow", hidden.status().as_u16()));
        let slow_was_pending = !slow_done.load(Ordering::SeqCst);
        gate.send(true).unwrap();
        (statuses, slow_was_pending)
    };
    let (slow, (statuses, slow_was_pending)) = tokio::join!(slow, meanwhile);
    assert_eq!(
        statuses,
        vec![
            ("globex upload", 201),
            ("globex delete", 200),
            ("acme upload", 201),
            ("acme replace", 201),
            ("acme rollback", 200),
            ("acme get slow", 404),
        ]
    );
    assert!(
        slow_was_pending,
        "every other write finished while the slow load was still held"
    );
    assert_eq!(slow, 201, "the slow upload completes once its load does");
    let info: Value = super::common::get_json(admin_url("acme/adapters/slow"), admin).await;
    assert_eq!(info["generation"], 1);
}

const BOUNDARY: &str = "loragate-test-boundary";

/// A multipart body up to the start of the `adapter_model` part's content.
fn form_head(name: &str, config: &[u8]) -> Vec<u8> {
    let mut head = Vec::new();
    let part = |head: &mut Vec<u8>, disposition: &str| {
        write!(
            head,
            "--{BOUNDARY}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n"
        )
        .unwrap();
    };
    part(&mut head, "name=\"name\"");
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b"\r\n");
    part(
        &mut head,
        "name=\"adapter_config\"; filename=\"adapter_config.json\"",
    );
    head.extend_from_slice(config);
    head.extend_from_slice(b"\r\n");
    part(
        &mut head,
        "name=\"adapter_model\"; filename=\"adapter_model.safetensors\"",
    );
    head
}

/// Starts an upload by hand that promises `body_length` bytes.
async fn start_upload(server: &TestServer, body_length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(server.address()).await.unwrap();
    let request = format!(
        "POST /admin/v1/tenants/anonymous/adapters HTTP/1.1\r\nHost: {}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {body_length}\r\n\r\n",
        server.address()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Reads one response (with a `content-length`) from a raw connection.
async fn read_response(stream: &mut TcpStream) -> (u16, Value) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "connection closed before a whole response");
        buffer.extend_from_slice(&chunk[..read]);
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map(|value| value.trim().parse().unwrap())
            .unwrap_or(0);
        if buffer.len() >= end + 4 + length {
            let status = head[9..12].parse().unwrap();
            let body = serde_json::from_slice(&buffer[end + 4..end + 4 + length]).unwrap();
            return (status, body);
        }
    }
}

/// Waits for a condition on the store's files; false if it never holds.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// Bytes in staged weights files, and the number of staged folders.
fn staged(store: &Path) -> (u64, usize) {
    let folders: Vec<_> = std::fs::read_dir(store.join(".staging"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    let bytes = folders
        .iter()
        .filter_map(|folder| std::fs::metadata(folder.join("adapter_model.safetensors")).ok())
        .map(|metadata| metadata.len())
        .sum();
    (bytes, folders.len())
}

/// Everything in the store but its scratch folders.
fn stored(store: &Path) -> Vec<String> {
    std::fs::read_dir(store)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_over_the_cap_is_refused_while_it_arrives_and_leaves_nothing() {
    let store = tempfile::tempdir().unwrap();
    let store_text = store.path().display().to_string();
    let server = TestServer::with(&[
        ("adapters.dir", &store_text),
        ("adapters.max_bytes", "20000"),
    ]);
    let (config, _) = files_of(tiny_adapter(161).path());
    let head = form_head("big", &config);
    // The body promises a megabyte; the answer comes once the cap is passed.
    let mut stream = start_upload(&server, head.len() + (1 << 20)).await;
    stream.write_all(&head).await.unwrap();
    stream.write_all(&vec![0u8; 21_000]).await.unwrap();
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "request_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("20000"));
    assert_eq!(staged(store.path()), (0, 0), "the staging file is gone");
    assert!(stored(store.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_mid_upload_leaves_nothing_behind() {
    let store = tempfile::tempdir().unwrap();
    let store_text = store.path().display().to_string();
    let server = TestServer::with(&[("adapters.dir", &store_text)]);
    let adapter = tiny_adapter(162);
    let (config, _) = files_of(adapter.path());
    let head = form_head("bot", &config);
    let mut stream = start_upload(&server, head.len() + (8 << 20)).await;
    stream.write_all(&head).await.unwrap();
    stream.write_all(&vec![7u8; 3 << 20]).await.unwrap();
    assert!(
        eventually(|| staged(store.path()).0 >= 1 << 20).await,
        "the weights go to a staging file as they arrive, not into memory"
    );
    drop(stream);
    assert!(
        eventually(|| staged(store.path()) == (0, 0)).await,
        "the staging folder is removed once the client is gone"
    );
    assert!(stored(store.path()).is_empty());
    // The gateway takes the next upload as usual.
    let uploaded = upload_as(&server, None, "anonymous", "bot", adapter.path(), None).await;
    assert_eq!(uploaded.status(), 201);
    assert_eq!(uploaded.headers()["etag"], "\"1\"");
}
