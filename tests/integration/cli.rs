//! The binary's own behaviour: start-up failures are the process's failure.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn serve_exits_non_zero_when_the_model_cannot_load() {
    let dir = tempfile::tempdir().unwrap();
    // A complete model folder whose weights are garbage: it passes every
    // start-up check and fails only inside the engine's loader.
    loragate::fixture::write_tiny_llama(dir.path(), 1).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[model]\nserved_name = \"broken\"\npath = \"{}\"\nformat = \"safetensors\"\ndtype = \"f32\"\n[adapters]\ndir = \"{}\"\n[auth]\nenabled = false\n",
            dir.path().display(),
            dir.path().join("adapters").display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_loragate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .output()
        .expect("runs");
    assert!(
        !output.status.success(),
        "a gateway without a model must not exit 0"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("failed to load"));
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn check_config_names_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[model]\nserved_name = \"m\"\npath = \"/nope.gguf\"\n[server]\nbindd = 1\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_loragate"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.bindd"), "{stderr}");
}

#[test]
fn the_upstream_example_config_is_valid() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join("upstream.example.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_loragate"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
}
