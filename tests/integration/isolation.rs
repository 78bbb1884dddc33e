//! One tenant must not slow, stall or reach another: a client that stops
//! reading, requests refused by limits, oversized prompts and stop strings,
//! each over real HTTP with the real engine.

use crate::common;

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::{MODEL, TestServer, chat_body, client, metric, new_key, settled_metric};
use serde_json::{Value, json};

fn sampled() -> String {
    format!("loragate_engine_sampled_tokens_total{{model=\"{MODEL}\"}}")
}

/// Opens a connection with a tiny receive buffer, sends a streamed request
/// for the whole context and never reads: the server's writes back up
/// within a few hundred tokens.
fn stalled_stream(server: &TestServer) -> std::net::TcpStream {
    let address: std::net::SocketAddr = server.address().parse().unwrap();
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    socket.connect(&address.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    let mut body = chat_body("Keep going", 2000);
    body["stream"] = json!(true);
    let body = body.to_string();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

async fn short_request_succeeds(server: &TestServer) {
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        client()
            .post(server.url("/v1/chat/completions"))
            .json(&chat_body("hi", 5))
            .send(),
    )
    .await
    .expect("another request is answered while a reader is stalled")
    .unwrap();
    assert_eq!(answer.status(), 200);
}

async fn never_reading_holds_up_nothing(engine: &str) {
    let server = TestServer::with(&[
        ("server.write_idle_timeout_ms", "600000"),
        ("model.engine", engine),
    ]);
    let before = metric(&server, &sampled()).await;
    let _stalled = stalled_stream(&server);
    // The stalled generation runs to its end in the engine (its output is
    // queued for the client), instead of blocking on the full socket.
    let after = settled_metric(&server, &sampled(), Duration::from_millis(500)).await;
    assert!(
        after - before >= 1500.0,
        "the engine kept generating for the stalled stream ({} tokens)",
        after - before
    );
    short_request_succeeds(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_never_reads_does_not_hold_up_the_shared_base_engine() {
    never_reading_holds_up_nothing("shared_base").await;
}

/// mistral.rs waits on a full per-request channel inside its step loop: the
/// gateway must drain it whatever the client does.
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_never_reads_does_not_hold_up_mistralrs() {
    never_reading_holds_up_nothing("mistralrs").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_reader_is_cut_off_and_charged_what_it_used() {
    let server = TestServer::with(&[("server.write_idle_timeout_ms", "300")]);
    let before = metric(&server, &sampled()).await;
    let mut stalled = stalled_stream(&server);
    let after = settled_metric(&server, &sampled(), Duration::from_millis(500)).await;
    let generated = after - before;
    // The tiny model may finish all 2000 tokens before the client is found
    // stalled; either way the generation ended once and was counted.
    let finished = |reason: &str| {
        format!(
            "loragate_requests_finished_total{{model=\"{MODEL}\",reason=\"{reason}\",tenant=\"anonymous\"}}"
        )
    };
    let ended =
        metric(&server, &finished("cancelled")).await + metric(&server, &finished("length")).await;
    assert_eq!(ended, 1.0);
    let charged = metric(
        &server,
        &format!("loragate_completion_tokens_total{{model=\"{MODEL}\",tenant=\"anonymous\"}}"),
    )
    .await;
    assert_eq!(charged, generated, "metered what the engine generated");
    // The server shut the connection: reading what was sent reaches its end.
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut sink = Vec::new();
    let read = stalled.read_to_end(&mut sink);
    assert!(
        read.is_ok() || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the connection was closed by the server, not left hanging: {read:?}"
    );
    short_request_succeeds(&server).await;
}

fn limited_tenancy() -> (String, String, String) {
    let (key, hash) = new_key();
    let (admin, admin_hash) = new_key();
    let toml = format!(
        r#"
[auth]
enabled = true
admin_api_keys = ["{admin_hash}"]
[[tenants]]
id = "acme"
api_keys = ["{hash}"]
[tenants.limits]
requests_per_minute = 1
"#
    );
    (toml, key, admin)
}

async fn chat_as(server: &TestServer, key: &str, body: &Value) -> (u16, Value) {
    server
        .post_json("/v1/chat/completions", body, Some(key))
        .await
}

const TOKENIZED: &str = "loragate_prompt_tokenization_seconds_count";

#[tokio::test(flavor = "multi_thread")]
async fn requests_over_the_limit_are_refused_before_any_engine_work() {
    let (toml, key, _) = limited_tenancy();
    let server = TestServer::with_toml(&toml, &[("server.max_body_bytes", "8388608")]);
    assert_eq!(chat_as(&server, &key, &chat_body("hi", 2)).await.0, 200);
    let tokenized = metric(&server, TOKENIZED).await;
    assert_eq!(tokenized, 1.0);
    // At its limit, a prompt that would fit is refused unread.
    let (status, body) = chat_as(&server, &key, &chat_body(&"word ".repeat(200), 2)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // While that refusal holds, a 4 MB prompt gets the same 429 unread.
    let (status, body) = chat_as(&server, &key, &chat_body(&"x".repeat(4 << 20), 2)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        metric(&server, TOKENIZED).await,
        tokenized,
        "no refused prompt was tokenized"
    );
}

/// Past its limit, a tenant's next requests are refused from the headers:
/// a body declared as 4 MB, of which only a few bytes ever arrive, still
/// gets its 429 (the limiter's, with OpenAI's headers) instead of waiting.
#[tokio::test(flavor = "multi_thread")]
async fn past_its_limit_a_tenant_is_refused_before_its_body_is_read() {
    let (toml, key, _) = limited_tenancy();
    let server = TestServer::with_toml(&toml, &[("server.max_body_bytes", "8388608")]);
    assert_eq!(chat_as(&server, &key, &chat_body("hi", 2)).await.0, 200);
    assert_eq!(chat_as(&server, &key, &chat_body("hi", 2)).await.0, 429);
    let mut socket = std::net::TcpStream::connect(server.address()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 4194304\r\n\r\n{{\"model\""
    )
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let read = socket
        .read(&mut answer)
        .expect("an answer without the body");
    let answer = String::from_utf8_lossy(&answer[..read]).to_lowercase();
    assert!(answer.starts_with("http/1.1 429"), "{answer}");
    assert!(
        answer.contains("x-ratelimit-remaining-requests: 0"),
        "{answer}"
    );
    assert!(answer.contains("rate_limit_exceeded"), "{answer}");
    assert_eq!(
        metric(
            &server,
            "loragate_ratelimit_rejections_total{limit=\"requests\",tenant=\"acme\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prompt_too_long_for_the_context_is_refused_by_its_bytes() {
    let server = TestServer::start();
    let before = metric(&server, TOKENIZED).await;
    // The tiny model's context is 2048 tokens of at most 13 bytes.
    let (status, body) = server
        .post_json(
            "/v1/chat/completions",
            &chat_body(&"y".repeat(2048 * 13), 2),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert_eq!(metric(&server, TOKENIZED).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_never_load_or_evict_adapters() {
    let (toml, key, admin) = limited_tenancy();
    let server = TestServer::with_toml(
        &toml,
        &[
            ("adapters.max_resident", "1"),
            ("adapters.warm_on_upload", "false"),
        ],
    );
    let adapter = common::tiny_adapter(71);
    common::upload_adapter(&server, Some(&admin), "acme", "bot", adapter.path()).await;
    assert_eq!(chat_as(&server, &key, &chat_body("hi", 2)).await.0, 200);
    let loads = "loragate_adapter_loads_total{result=\"ok\",tenant=\"acme\"}";
    assert_eq!(metric(&server, loads).await, 0.0, "nothing loaded yet");
    let mut body = chat_body("hi", 2);
    body["model"] = json!("bot");
    for _ in 0..5 {
        assert_eq!(chat_as(&server, &key, &body).await.0, 429);
    }
    assert_eq!(
        metric(&server, loads).await,
        0.0,
        "refused requests load nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn long_stop_sequences_are_refused() {
    let server = TestServer::start();
    let mut body = chat_body("hi", 4);
    body["stop"] = json!(["ok", "z".repeat(257)]);
    let (status, error) = server.post_json("/v1/chat/completions", &body, None).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["param"], "stop");
    body["stop"] = json!(["z".repeat(256)]);
    let (status, answer) = server.post_json("/v1/chat/completions", &body, None).await;
    assert_eq!(status, 200, "{answer}");
}

/// Clients sending back-to-back requests to one adapter until stopped,
/// each answer checked.
struct BusyClients {
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl BusyClients {
    /// Starts `clients` loops asking `model` for `tokens` tokens, and
    /// returns once `warm_up` answers came back.
    async fn start(
        server: &std::sync::Arc<TestServer>,
        model: &str,
        clients: usize,
        tokens: usize,
        warm_up: usize,
    ) -> BusyClients {
        use std::sync::atomic::Ordering;
        let busy = BusyClients {
            done: Default::default(),
            stop: Default::default(),
            tasks: Vec::new(),
        };
        let mut body = chat_body("hi", tokens);
        body["model"] = json!(model);
        let tasks = (0..clients)
            .map(|_| {
                let (server, body) = (server.clone(), body.clone());
                let (done, stop) = (busy.done.clone(), busy.stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let (status, answer) =
                            server.post_json("/v1/chat/completions", &body, None).await;
                        assert_eq!(status, 200, "{answer}");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let busy = BusyClients { tasks, ..busy };
        while busy.answered() < warm_up {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        busy
    }

    fn answered(&self) -> usize {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

/// With one adapter slot, a tenant sending back-to-back requests to its
/// adapter keeps that slot busy; another adapter's request must get the slot
/// after the requests already holding it, not after the hog stops.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_adapter_cannot_keep_the_only_slot_from_another() {
    let server = std::sync::Arc::new(TestServer::with(&[
        ("adapters.max_resident", "1"),
        ("adapters.warm_on_upload", "false"),
        ("adapters.load_timeout_secs", "120"),
    ]));
    let (hog, quiet) = (common::tiny_adapter(81), common::tiny_adapter(82));
    common::upload_adapter(&server, None, "anonymous", "hog", hog.path()).await;
    common::upload_adapter(&server, None, "anonymous", "quiet", quiet.path()).await;
    let hogs = BusyClients::start(&server, "hog", 2, 24, 4).await;
    let before = hogs.answered();
    let mut body = chat_body("hi", 4);
    body["model"] = json!("quiet");
    let (status, answer) = server.post_json("/v1/chat/completions", &body, None).await;
    let hog_requests_meanwhile = hogs.answered() - before;
    hogs.stop().await;
    assert_eq!(status, 200, "{answer}");
    // The two hog requests holding the slot finish, then the quiet adapter
    // loads; a hog request that raced in between may finish too.
    assert!(
        hog_requests_meanwhile <= 4,
        "{hog_requests_meanwhile} hog requests were served while the other adapter waited"
    );
}

/// An admin's upload warms the new adapter only into a free or idle slot:
/// with the one slot serving another tenant's adapter, the upload neither
/// waits for it nor drains it, and the new adapter loads on its first
/// request instead.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_never_takes_a_busy_slot_to_warm_up() {
    let server = std::sync::Arc::new(TestServer::with(&[
        ("adapters.max_resident", "1"),
        ("adapters.load_timeout_secs", "120"),
    ]));
    let evictions = "loragate_adapter_evictions_total{tenant=\"anonymous\"}";
    let (busy, newcomer) = (common::tiny_adapter(91), common::tiny_adapter(92));
    common::upload_adapter(&server, None, "anonymous", "busy", busy.path()).await;
    // Three clients with long answers, and one stream far longer than the
    // upload, so the slot is never idle (three equal answers batched
    // together can all end in one step and leave it idle for an instant).
    let clients = BusyClients::start(&server, "busy", 3, 48, 2).await;
    let mut long = chat_body("hi", 1500);
    long["model"] = json!("busy");
    long["stream"] = json!(true);
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut frames = futures_util::StreamExt::boxed(response.bytes_stream());
    futures_util::StreamExt::next(&mut frames)
        .await
        .expect("the long stream runs")
        .expect("readable");
    let reader = tokio::spawn(async move {
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut frames).await {}
    });
    common::upload_adapter(&server, None, "anonymous", "newcomer", newcomer.path()).await;
    let evicted_by_the_upload = common::metric(&server, evictions).await;
    reader.abort();
    clients.stop().await;
    assert_eq!(evicted_by_the_upload, 0.0, "the busy adapter kept its slot");
    let mut body = chat_body("hi", 4);
    body["model"] = json!("newcomer");
    let (status, answer) = server.post_json("/v1/chat/completions", &body, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(common::metric(&server, evictions).await, 1.0);
}

/// mistral.rs runs one KV-cache size at a time, so a request whose prompt
/// falls in another size waits inside the engine for the running ones: that
/// wait is bounded by the queue timeout (503), never by how long another
/// tenant's generation runs.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_another_cache_size_is_bounded_by_the_queue_timeout() {
    let server = TestServer::with(&[
        ("model.engine", "mistralrs"),
        ("admission.queue_timeout_ms", "400"),
    ]);
    // Over 512 prompt tokens: another cache size than a short prompt's.
    let mut long = chat_body(&"many words make a long prompt ".repeat(22), 1000);
    long["stream"] = json!(true);
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let mut frames = futures_util::StreamExt::boxed(response.bytes_stream());
    futures_util::StreamExt::next(&mut frames)
        .await
        .expect("the long stream runs")
        .expect("readable");
    let reader = tokio::spawn(async move {
        let mut bytes = 0;
        while let Some(Ok(frame)) = futures_util::StreamExt::next(&mut frames).await {
            bytes += frame.len();
        }
        bytes
    });
    let started = std::time::Instant::now();
    let (status, answer) = server
        .post_json("/v1/chat/completions", &chat_body("Hi", 4), None)
        .await;
    let waited = started.elapsed();
    assert!(!reader.is_finished(), "the long stream was still running");
    assert_eq!(status, 503, "{answer}");
    assert!(
        waited < Duration::from_secs(5),
        "refused after the queue timeout, not after the other generation ({waited:?})"
    );
    assert_eq!(
        metric(
            &server,
            "loragate_admission_rejections_total{reason=\"engine_start_timeout\"}"
        )
        .await,
        1.0
    );
    reader.abort();
}
