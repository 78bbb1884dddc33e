//! Adapters end to end over HTTP on the tiny model: upload, validation,
//! selection, replacement under load, rollback, eviction, isolation, restart.
//! `options`: which PEFT options are refused; `writes`: how uploads reach
//! the store.

use crate::common;
#[path = "adapters_api/options.rs"]
mod options;
#[path = "adapters_api/writes.rs"]
mod writes;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{MODEL, TestServer, authed, chat_body, client, metric, new_key, tiny_adapter};
use loragate::fixture::lora::{AdapterSpec, adapter_config, write_adapter};
use serde_json::Value;

fn form(name: &str, config: Vec<u8>, weights: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .text("name", name.to_string())
        .part(
            "adapter_config",
            reqwest::multipart::Part::bytes(config).file_name("adapter_config.json"),
        )
        .part(
            "adapter_model",
            reqwest::multipart::Part::bytes(weights).file_name("adapter_model.safetensors"),
        )
}

fn files_of(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(dir.join("adapter_config.json")).unwrap(),
        std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
    )
}

async fn upload_as(
    server: &TestServer,
    key: Option<&str>,
    tenant: &str,
    name: &str,
    dir: &Path,
    if_match: Option<u64>,
) -> reqwest::Response {
    let (config, weights) = files_of(dir);
    let mut request = client()
        .post(server.url(&format!("/admin/v1/tenants/{tenant}/adapters")))
        .multipart(form(name, config, weights));
    if let Some(generation) = if_match {
        request = request.header("if-match", format!("\"{generation}\""));
    }
    if let Some(key) = key {
        request = authed(request, key);
    }
    request.send().await.unwrap()
}

async fn upload(
    server: &TestServer,
    name: &str,
    dir: &Path,
    if_match: Option<u64>,
) -> reqwest::Response {
    upload_as(server, None, "anonymous", name, dir, if_match).await
}

async fn answer(server: &TestServer, model: &str) -> (u16, String) {
    let mut body = chat_body("Tell me something", 16);
    body["model"] = model.into();
    let (status, json) = server.post_json("/v1/chat/completions", &body, None).await;
    if status == 200 {
        assert_eq!(
            json["model"], model,
            "the response names the model asked for"
        );
    }
    (
        status,
        json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// A server with tenants acme and globex; returns it and their keys and an admin key.
fn two_tenants() -> (TestServer, String, String, String) {
    let (acme, acme_hash) = new_key();
    let (globex, globex_hash) = new_key();
    let (admin, admin_hash) = new_key();
    let toml = format!(
        "[auth]\nadmin_api_keys = [\"{admin_hash}\"]\n[[tenants]]\nid = \"acme\"\napi_keys = [\"{acme_hash}\"]\n[[tenants]]\nid = \"globex\"\napi_keys = [\"{globex_hash}\"]\n"
    );
    (TestServer::with_toml(&toml, &[]), acme, globex, admin)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uploaded_adapter_serves_its_first_request() {
    let server = TestServer::start();
    let dir = tiny_adapter(31);
    let uploaded = upload(&server, "bot", dir.path(), None).await;
    assert_eq!(uploaded.status(), 201);
    assert_eq!(uploaded.headers()["etag"], "\"1\"");
    let info: Value = uploaded.json().await.unwrap();
    assert_eq!(info["generation"], 1);
    assert_eq!(info["resident"], true, "warmed on upload");
    assert_eq!(info["rank"], 8);
    assert_eq!(info["sha256"].as_str().unwrap().len(), 64);
    let (_, base) = answer(&server, MODEL).await;
    let (status, with_adapter) = answer(&server, "bot").await;
    assert_eq!(status, 200);
    assert_ne!(with_adapter, base, "the adapter changes the output");
    assert_eq!(
        answer(&server, &format!("{MODEL}::bot")).await.1,
        with_adapter,
        "both naming forms reach it"
    );
    let models: Value = common::get_json(server.url("/v1/models"), None).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![MODEL, "bot"]);
    let one = client()
        .get(server.url("/admin/v1/tenants/anonymous/adapters/bot"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(metric(&server, "loragate_adapters_resident").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_invalid_upload_is_refused_and_leaves_nothing() {
    let adapters = tempfile::tempdir().unwrap();
    let dir_text = adapters.path().display().to_string();
    let server = TestServer::with(&[("adapters.dir", &dir_text), ("adapters.max_bytes", "20000")]);
    let good = tiny_adapter(1);
    let (config, weights) = files_of(good.path());
    let mut dora = adapter_config(&AdapterSpec::tiny(1), "tiny");
    dora["use_dora"] = true.into();
    let mut wide = AdapterSpec::tiny(1);
    wide.targets = vec![
        "q_proj".into(),
        "v_proj".into(),
        "gate_proj".into(),
        "up_proj".into(),
        "down_proj".into(),
        "o_proj".into(),
        "k_proj".into(),
    ];
    let big = tempfile::tempdir().unwrap();
    write_adapter(
        big.path(),
        &loragate::fixture::TINY,
        &AdapterSpec { rank: 16, ..wide },
    )
    .unwrap();
    let cases: Vec<(&str, reqwest::multipart::Form, u16, &str)> = vec![
        (
            "dora",
            form("bot", serde_json::to_vec(&dora).unwrap(), weights.clone()),
            400,
            "use_dora",
        ),
        (
            "garbage weights",
            form("bot", config.clone(), b"not safetensors".to_vec()),
            400,
            "safetensors",
        ),
        (
            "bad json",
            form("bot", b"{".to_vec(), weights.clone()),
            400,
            "JSON",
        ),
        (
            "traversal",
            form("../escape", config.clone(), weights.clone()),
            400,
            "names",
        ),
        (
            "missing model",
            reqwest::multipart::Form::new().text("name", "bot").part(
                "adapter_config",
                reqwest::multipart::Part::bytes(config.clone()),
            ),
            400,
            "adapter_model",
        ),
        (
            "too large",
            form("bot", files_of(big.path()).0, files_of(big.path()).1),
            413,
            "limit",
        ),
    ];
    for (case, form, status, needle) in cases {
        let response = client()
            .post(server.url("/admin/v1/tenants/anonymous/adapters"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{case}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{case}: {message}");
    }
    let unknown = client()
        .post(server.url("/admin/v1/tenants/nobody/adapters"))
        .multipart(form("bot", config, weights))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let list: Value =
        common::get_json(server.url("/admin/v1/tenants/anonymous/adapters"), None).await;
    assert_eq!(list["data"], serde_json::json!([]));
    let leftovers: Vec<_> = std::fs::read_dir(adapters.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "nothing half-written: {leftovers:?}");
    for scratch in [".staging", ".trash"] {
        assert_eq!(
            std::fs::read_dir(adapters.path().join(scratch))
                .unwrap()
                .count(),
            0,
            "{scratch} is empty"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_needs_the_current_generation_and_rolls_back() {
    let server = TestServer::start();
    let (first, second) = (tiny_adapter(41), tiny_adapter(42));
    assert_eq!(
        upload(&server, "bot", first.path(), None).await.status(),
        201
    );
    let (_, output_one) = answer(&server, "bot").await;
    assert_eq!(
        upload(&server, "bot", second.path(), None).await.status(),
        409,
        "no blind overwrite"
    );
    let stale = upload(&server, "bot", second.path(), Some(7)).await;
    assert_eq!(stale.status(), 409);
    let body: Value = stale.json().await.unwrap();
    assert_eq!(body["error"]["code"], "generation_mismatch");
    let replaced = upload(&server, "bot", second.path(), Some(1)).await;
    assert_eq!(replaced.status(), 201);
    assert_eq!(replaced.headers()["etag"], "\"2\"");
    let (_, output_two) = answer(&server, "bot").await;
    assert_ne!(output_one, output_two);
    let rolled = client()
        .post(server.url("/admin/v1/tenants/anonymous/adapters/bot/rollback"))
        .send()
        .await
        .unwrap();
    assert_eq!(rolled.status(), 200);
    let info: Value = rolled.json().await.unwrap();
    assert_eq!(info["generation"], 1);
    assert_eq!(
        answer(&server, "bot").await.1,
        output_one,
        "the previous generation serves again"
    );
    let again = client()
        .post(server.url("/admin/v1/tenants/anonymous/adapters/bot/rollback"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let deleted = client()
        .delete(server.url("/admin/v1/tenants/anonymous/adapters/bot"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(answer(&server, "bot").await.0, 404);
}

async fn rollback(server: &TestServer, name: &str) -> reqwest::Response {
    client()
        .post(server.url(&format!(
            "/admin/v1/tenants/anonymous/adapters/{name}/rollback"
        )))
        .send()
        .await
        .unwrap()
}

/// Uploads and returns (status, ETag, generation in the body, sha256).
async fn upload_seen(
    server: &TestServer,
    name: &str,
    dir: &Path,
    if_match: Option<u64>,
) -> (u16, String, Value, Value) {
    let response = upload(server, name, dir, if_match).await;
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap();
    (
        status,
        etag,
        body["generation"].clone(),
        body["sha256"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_etag_cannot_overwrite_after_a_rollback_or_a_delete() {
    let store = tempfile::tempdir().unwrap();
    let store_text = store.path().display().to_string();
    let (a, b, c) = (tiny_adapter(131), tiny_adapter(132), tiny_adapter(133));
    {
        let server = TestServer::with(&[("adapters.dir", &store_text)]);
        assert_eq!(upload_seen(&server, "bot", a.path(), None).await.0, 201);
        let (status, etag, ..) = upload_seen(&server, "bot", b.path(), Some(1)).await;
        assert_eq!((status, etag.as_str()), (201, "\"2\""));
        // Another admin read the adapter now and holds ETag "2".
        let rolled = rollback(&server, "bot").await;
        assert_eq!(rolled.headers()["etag"], "\"1\"");
        let (status, etag, generation, sha256) =
            upload_seen(&server, "bot", c.path(), Some(1)).await;
        assert_eq!(
            (status, etag.as_str(), generation),
            (201, "\"3\"", 3.into()),
            "2 named another upload; it is never handed out again"
        );
        let stale = upload(&server, "bot", b.path(), Some(2)).await;
        assert_eq!(stale.status(), 409, "the holder of \"2\" cannot overwrite");
        let body: Value = stale.json().await.unwrap();
        assert_eq!(body["error"]["code"], "generation_mismatch");
        let info: Value =
            common::get_json(server.url("/admin/v1/tenants/anonymous/adapters/bot"), None).await;
        assert_eq!((&info["generation"], &info["sha256"]), (&3.into(), &sha256));
        let deleted = client()
            .delete(server.url("/admin/v1/tenants/anonymous/adapters/bot"))
            .header("if-match", "\"3\"")
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 200);
    }
    // A restart and a re-created name continue the numbering.
    let server = TestServer::with(&[("adapters.dir", &store_text)]);
    let (status, etag, ..) = upload_seen(&server, "bot", a.path(), None).await;
    assert_eq!((status, etag.as_str()), (201, "\"4\""));
    for stale in [1, 2, 3] {
        assert_eq!(
            upload(&server, "bot", b.path(), Some(stale)).await.status(),
            409,
            "ETag {stale} named an upload that is gone"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_under_load_fails_no_request_and_switches_outputs() {
    let server = TestServer::start();
    let (first, second) = (tiny_adapter(51), tiny_adapter(52));
    assert_eq!(
        upload(&server, "bot", first.path(), None).await.status(),
        201
    );
    let old = answer(&server, "bot").await.1;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, base) = (stop.clone(), server.base.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut body = chat_body("Tell me something", 16);
                body["model"] = "bot".into();
                let response = client()
                    .post(format!("{base}/v1/chat/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let json: Value = response.json().await.unwrap();
                seen.push((
                    status,
                    json["choices"][0]["message"]["content"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        upload(&server, "bot", second.path(), Some(1))
            .await
            .status(),
        201
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let new = answer(&server, "bot").await.1;
    assert_ne!(old, new);
    let mut total = 0;
    for client in clients {
        let seen = client.await.unwrap();
        total += seen.len();
        assert!(
            seen.iter().all(|(status, _)| *status == 200),
            "zero failed requests: {seen:?}"
        );
        assert!(
            seen.iter().all(|(_, text)| *text == old || *text == new),
            "every answer is one generation's"
        );
        assert_eq!(
            seen.last().map(|(_, text)| text.as_str()),
            Some(new.as_str()),
            "clients end on the new generation"
        );
        let switched_at = seen
            .iter()
            .position(|(_, text)| *text == new)
            .unwrap_or(seen.len());
        assert!(
            seen[switched_at..].iter().all(|(_, text)| *text == new),
            "no client goes back to the old generation"
        );
    }
    assert!(total > 8, "the load was continuous ({total} requests)");
    // The old generation is freed once its last request is done.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "loragate_adapters_resident").await != 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&server, "loragate_adapters_resident").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_budget_evicts_the_least_recently_used_and_reloads_on_demand() {
    let server = TestServer::with(&[("adapters.max_resident", "1")]);
    let (a, b) = (tiny_adapter(61), tiny_adapter(62));
    assert_eq!(upload(&server, "a", a.path(), None).await.status(), 201);
    let (_, output_a) = answer(&server, "a").await;
    assert_eq!(upload(&server, "b", b.path(), None).await.status(), 201);
    assert_eq!(
        metric(
            &server,
            "loragate_adapter_evictions_total{tenant=\"anonymous\"}"
        )
        .await,
        1.0
    );
    assert_eq!(metric(&server, "loragate_adapters_resident").await, 1.0);
    let info: Value =
        common::get_json(server.url("/admin/v1/tenants/anonymous/adapters/a"), None).await;
    assert_eq!(info["resident"], false);
    let (status, reloaded) = answer(&server, "a").await;
    assert_eq!(status, 200);
    assert_eq!(reloaded, output_a, "a cold reload serves the same adapter");
    assert_eq!(
        metric(
            &server,
            "loragate_adapter_loads_total{result=\"ok\",tenant=\"anonymous\"}"
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(
            &server,
            "loragate_adapter_evictions_total{tenant=\"anonymous\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_for_a_cold_adapter_share_one_load() {
    let server = TestServer::with(&[("adapters.warm_on_upload", "false")]);
    assert_eq!(
        upload(&server, "cold", tiny_adapter(71).path(), None)
            .await
            .status(),
        201
    );
    let requests = (0..6).map(|_| answer(&server, "cold"));
    let results = futures_util::future::join_all(requests).await;
    assert!(
        results
            .iter()
            .all(|(status, text)| *status == 200 && *text == results[0].1)
    );
    assert_eq!(
        metric(
            &server,
            "loragate_adapter_loads_total{result=\"ok\",tenant=\"anonymous\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_see_and_use_only_their_adapters() {
    let (server, acme, globex, admin) = two_tenants();
    let dir = tiny_adapter(81);
    assert_eq!(
        upload_as(&server, Some(&acme), "acme", "bot", dir.path(), None)
            .await
            .status(),
        403,
        "tenants cannot upload"
    );
    assert_eq!(
        upload_as(&server, Some(&admin), "acme", "bot", dir.path(), None)
            .await
            .status(),
        201
    );
    let chat = |key: String| {
        let url = server.url("/v1/chat/completions");
        async move {
            let mut body = chat_body("hi", 4);
            body["model"] = "bot".into();
            authed(client().post(url), &key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(chat(acme.clone()).await, 200);
    assert_eq!(
        chat(globex.clone()).await,
        404,
        "another tenant's adapter does not exist for globex"
    );
    let models: Value = common::get_json(server.url("/v1/models"), Some(&globex)).await;
    assert_eq!(
        models["data"].as_array().unwrap().len(),
        1,
        "globex sees only the base"
    );
    let models: Value = common::get_json(server.url("/v1/models"), Some(&acme)).await;
    assert_eq!(models["data"][1]["id"], "bot");
}

#[tokio::test(flavor = "multi_thread")]
async fn adapters_survive_a_restart() {
    let store = tempfile::tempdir().unwrap();
    let store_text = store.path().display().to_string();
    let output = {
        let server = TestServer::with(&[("adapters.dir", &store_text)]);
        assert_eq!(
            upload(&server, "bot", tiny_adapter(91).path(), None)
                .await
                .status(),
            201
        );
        assert_eq!(
            upload(&server, "bot", tiny_adapter(92).path(), Some(1))
                .await
                .status(),
            201
        );
        answer(&server, "bot").await.1
    };
    let server = TestServer::with(&[("adapters.dir", &store_text)]);
    let info: Value =
        common::get_json(server.url("/admin/v1/tenants/anonymous/adapters/bot"), None).await;
    assert_eq!(info["generation"], 2);
    assert_eq!(info["generations"], serde_json::json!([1, 2]));
    assert_eq!(info["resident"], false, "nothing is loaded until used");
    assert_eq!(answer(&server, "bot").await, (200, output));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_waits_for_a_busy_slot_instead_of_failing() {
    let server = TestServer::with(&[("adapters.max_resident", "1")]);
    assert_eq!(
        upload(&server, "a", tiny_adapter(101).path(), None)
            .await
            .status(),
        201
    );
    // A long stream keeps "a" in use, so the only slot cannot be freed yet.
    let mut body = chat_body("Keep going", 1500);
    body["model"] = "a".into();
    body["stream"] = true.into();
    let stream = client()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let started = Instant::now();
    let second = tiny_adapter(102);
    let pending = upload(&server, "b", second.path(), None);
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(stream);
    };
    let (uploaded, ()) = tokio::join!(pending, release);
    assert_eq!(uploaded.status(), 201, "the upload waited for the slot");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it could not have loaded before the stream ended"
    );
    assert_eq!(answer(&server, "b").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_default_adapter_answers_for_the_base_name() {
    let (key, hash) = new_key();
    let (admin, admin_hash) = new_key();
    let toml = format!(
        "[auth]\nadmin_api_keys = [\"{admin_hash}\"]\n[[tenants]]\nid = \"acme\"\napi_keys = [\"{hash}\"]\ndefault_adapter = \"house-style\"\n"
    );
    let server = TestServer::with_toml(&toml, &[]);
    let ask = |model: &str| {
        let (url, key) = (server.url("/v1/chat/completions"), key.clone());
        let mut body = chat_body("Tell me something", 16);
        body["model"] = model.into();
        async move {
            let response = authed(client().post(url), &key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let json: Value = response.json().await.unwrap();
            (
                status,
                json["model"].as_str().unwrap_or_default().to_string(),
                json["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }
    };
    // Until the default adapter exists, asking for the base is a 404 rather than a silent fallback.
    assert_eq!(ask(MODEL).await.0, 404);
    let dir = tiny_adapter(111);
    assert_eq!(
        upload_as(
            &server,
            Some(&admin),
            "acme",
            "house-style",
            dir.path(),
            None
        )
        .await
        .status(),
        201
    );
    let (status, model, via_base) = ask(MODEL).await;
    assert_eq!(
        (status, model.as_str()),
        (200, MODEL),
        "the answer names what was asked"
    );
    assert_eq!(
        via_base,
        ask("house-style").await.2,
        "the base name reaches the default adapter"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_adapter_is_usable_by_every_tenant_by_its_owners_name() {
    let (server, acme, globex, admin) = two_tenants();
    let upload_shared = |name: &'static str, shared: &'static str, seed: u64| {
        let (url, admin) = (server.url("/admin/v1/tenants/acme/adapters"), admin.clone());
        async move {
            let dir = tiny_adapter(seed);
            let (config, weights) = files_of(dir.path());
            let form = form(name, config, weights).text("shared", shared);
            authed(client().post(url), &admin)
                .multipart(form)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(upload_shared("house", "true", 121).await, 201);
    assert_eq!(upload_shared("secret", "false", 122).await, 201);
    let chat = |key: String, model: &'static str| {
        let url = server.url("/v1/chat/completions");
        async move {
            let mut body = chat_body("hi", 8);
            body["model"] = model.into();
            let response = authed(client().post(url), &key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let json: Value = response.json().await.unwrap();
            (
                status,
                json["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }
    };
    let (status, from_globex) = chat(globex.clone(), "acme/house").await;
    assert_eq!(status, 200);
    assert_eq!(
        chat(acme.clone(), "house").await.1,
        from_globex,
        "the same adapter for owner and guest"
    );
    assert_eq!(
        chat(globex.clone(), "acme/secret").await.0,
        404,
        "unshared adapters stay private"
    );
    assert_eq!(
        chat(globex.clone(), "house").await.0,
        404,
        "a guest names the owner"
    );
    let models = common::get_json(server.url("/v1/models"), Some(&globex)).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![MODEL, "acme/house"]);
}

/// Holds generations whose prompt is "hold" until the gate opens.
struct HoldingEngine {
    inner: std::sync::Arc<dyn loragate::engine::Engine>,
    open: tokio::sync::watch::Receiver<bool>,
    held: tokio::sync::mpsc::UnboundedSender<()>,
}

#[async_trait::async_trait]
impl loragate::engine::Engine for HoldingEngine {
    fn models(&self) -> Vec<loragate::engine::ModelCard> {
        self.inner.models()
    }
    async fn count_prompt_tokens(
        &self,
        model: &str,
        messages: &[loragate::engine::PromptMessage],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<loragate::engine::PromptTokens, loragate::engine::EngineError> {
        self.inner.count_prompt_tokens(model, messages, tools).await
    }
    async fn generate(
        &self,
        request: loragate::engine::InferenceRequest,
    ) -> Result<loragate::engine::InferenceStream, loragate::engine::EngineError> {
        if request.messages.iter().any(|m| m.content == "hold") {
            let _ = self.held.send(());
            let _ = self.open.clone().wait_for(|open| *open).await;
        }
        self.inner.generate(request).await
    }
    async fn load_adapter(
        &self,
        id: &str,
        adapter: &loragate::engine::AdapterFiles,
    ) -> Result<u64, loragate::engine::EngineError> {
        self.inner.load_adapter(id, adapter).await
    }
    async fn unload_adapter(&self, id: &str) -> Result<(), loragate::engine::EngineError> {
        self.inner.unload_adapter(id).await
    }
}

/// A chat resolves its adapter's generation when it arrives and loads it
/// once admitted. A rollback in between discards that generation's files
/// (found by scripts/soak.sh: such chats answered 500); the chat is served
/// by what the name serves once it is admitted.
#[tokio::test(flavor = "multi_thread")]
async fn a_chat_waiting_for_a_slot_survives_a_rollback_of_its_generation() {
    let (gate, open) = tokio::sync::watch::channel(false);
    let (held, mut holding) = tokio::sync::mpsc::unbounded_channel();
    let server = TestServer::with_engine("", &[("admission.max_in_flight", "1")], move |inner| {
        std::sync::Arc::new(HoldingEngine { inner, open, held })
    });
    let (first, second) = (tiny_adapter(41), tiny_adapter(42));
    assert_eq!(
        upload(&server, "bot", first.path(), None).await.status(),
        201
    );
    let (_, output_one) = answer(&server, "bot").await;
    assert_eq!(
        upload(&server, "bot", second.path(), Some(1))
            .await
            .status(),
        201
    );
    // The only slot, held by a base-model chat the engine has not started.
    let holder = tokio::spawn(
        client()
            .post(server.url("/v1/chat/completions"))
            .json(&chat_body("hold", 4))
            .send(),
    );
    // The holder has its slot once the engine is asked to generate.
    holding.recv().await.expect("the holder reached the engine");
    let depth = "loragate_admission_queue_depth";
    let deadline = Instant::now() + Duration::from_secs(60);
    let base = server.base.clone();
    let waiting = tokio::spawn(async move {
        let mut body = chat_body("Tell me something", 16);
        body["model"] = "bot".into();
        let response = client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    });
    while metric(&server, depth).await < 1.0 {
        assert!(Instant::now() < deadline, "the adapter chat never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rolled = rollback(&server, "bot").await;
    assert_eq!(rolled.status(), 200);
    gate.send(true).unwrap();
    assert_eq!(holder.await.unwrap().unwrap().status(), 200);
    let (status, text) = waiting.await.unwrap();
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"], output_one,
        "generation 1 serves it, as the name does now"
    );
}
