//! The committed `openapi.json` must match what the code describes.
//! Regenerate with `cargo run -- openapi > openapi.json`.

#[test]
fn committed_spec_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = loragate::api::openapi::spec_json();
    if std::env::var_os("LORAGATE_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write openapi.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.json is out of date: run `cargo run -- openapi > openapi.json` (or LORAGATE_UPDATE_OPENAPI=1 cargo test --test openapi)"
    );
}

#[test]
fn every_route_declares_its_error_responses() {
    let spec: serde_json::Value =
        serde_json::from_str(&loragate::api::openapi::spec_json()).unwrap();
    let chat = &spec["paths"]["/v1/chat/completions"]["post"]["responses"];
    for status in ["200", "400", "404", "413", "500", "503"] {
        assert!(
            chat[status].is_object(),
            "chat completions documents {status}"
        );
    }
    let error = &spec["components"]["schemas"]["ErrorResponse"];
    assert!(error.is_object());
}
