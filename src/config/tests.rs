use super::*;

fn model_file() -> tempfile::NamedTempFile {
    tempfile::NamedTempFile::new().expect("temp file")
}

fn minimal(path: &Path) -> String {
    format!(
        "[model]\nserved_name = \"m\"\npath = \"{}\"\nformat = \"gguf\"\n",
        path.display()
    )
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn key_of(error: ConfigError) -> String {
    match error {
        ConfigError::Key { key, .. } => key,
        other => panic!("expected a key error, got {other}"),
    }
}

#[test]
fn minimal_config_takes_defaults() {
    let file = model_file();
    let config = Config::from_toml_str(&minimal(file.path()), no_env(), Path::new("/")).unwrap();
    assert_eq!(config.server.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(config.admission.max_in_flight, 16);
    assert_eq!(config.model.format, ModelFormat::Gguf);
}

#[test]
fn unknown_key_is_refused_by_name() {
    let file = model_file();
    let text = format!("{}max_tokenz = 5\n", minimal(file.path()));
    let error = Config::from_toml_str(&text, no_env(), Path::new("/")).unwrap_err();
    assert_eq!(key_of(error), "model.max_tokenz");
}

#[test]
fn unknown_section_is_refused() {
    let file = model_file();
    let text = format!("{}[servr]\nbind = \"x\"\n", minimal(file.path()));
    let error = Config::from_toml_str(&text, no_env(), Path::new("/")).unwrap_err();
    assert!(error.to_string().contains("servr"), "{error}");
}

#[test]
fn wrong_type_names_the_key() {
    let file = model_file();
    let text = format!(
        "{}[admission]\nmax_queued = \"many\"\n",
        minimal(file.path())
    );
    let error = Config::from_toml_str(&text, no_env(), Path::new("/")).unwrap_err();
    assert_eq!(key_of(error), "admission.max_queued");
}

#[test]
fn environment_overrides_file_with_types() {
    let file = model_file();
    let env = vec![
        (
            "LORAGATE__SERVER__BIND".to_string(),
            "0.0.0.0:9999".to_string(),
        ),
        (
            "LORAGATE__ADMISSION__MAX_QUEUED".to_string(),
            "3".to_string(),
        ),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let config = Config::from_toml_str(&minimal(file.path()), env, Path::new("/")).unwrap();
    assert_eq!(config.server.bind.port(), 9999);
    assert_eq!(config.admission.max_queued, 3);
}

#[test]
fn unknown_environment_key_is_refused() {
    let file = model_file();
    let env = vec![("LORAGATE__SERVER__BINDD".to_string(), "x".to_string())];
    let error = Config::from_toml_str(&minimal(file.path()), env, Path::new("/")).unwrap_err();
    assert!(error.to_string().contains("bindd"), "{error}");
}

#[test]
fn invalid_values_name_their_key() {
    let file = model_file();
    let cases = [
        ("[server]\nbind = \"nowhere\"\n", "server.bind"),
        (
            "[admission]\nmax_in_flight = 0\n",
            "admission.max_in_flight",
        ),
    ];
    for (extra, key) in cases {
        let text = format!("{}{extra}", minimal(file.path()));
        let error = Config::from_toml_str(&text, no_env(), Path::new("/")).unwrap_err();
        assert_eq!(key_of(error), key);
    }
    let bf16 = format!("{}dtype = \"bf16\"\n", minimal(file.path()));
    assert_eq!(
        key_of(Config::from_toml_str(&bf16, no_env(), Path::new("/")).unwrap_err()),
        "model.dtype"
    );
}

#[test]
fn missing_model_file_is_named() {
    let text = "[model]\nserved_name = \"m\"\npath = \"/does/not/exist.gguf\"\n";
    let error = Config::from_toml_str(text, no_env(), Path::new("/")).unwrap_err();
    assert_eq!(key_of(error), "model.path");
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.gguf"), b"x").unwrap();
    let text = "[model]\nserved_name = \"m\"\npath = \"m.gguf\"\n";
    let config = Config::from_toml_str(text, no_env(), dir.path()).unwrap();
    assert_eq!(config.model.path, dir.path().join("m.gguf"));
}

#[test]
fn paged_attention_is_checked() {
    let file = model_file();
    let on_cpu = format!(
        "{}[model.paged_attention]\nenabled = true\n",
        minimal(file.path())
    );
    let error = Config::from_toml_str(&on_cpu, no_env(), Path::new("/")).unwrap_err();
    assert_eq!(key_of(error), "model.paged_attention.enabled");
    let off = format!(
        "{}[model.paged_attention]\nenabled = false\nblock_size = 7\n",
        minimal(file.path())
    );
    let config = Config::from_toml_str(&off, no_env(), Path::new("/")).unwrap();
    assert_eq!(
        config.model.paged_attention, None,
        "disabled settings are not checked or used"
    );
}

fn upstream_config(upstream: &str) -> String {
    format!(
        "[model]\nserved_name = \"m\"\ncontext_length = 4096\n[upstream]\n{upstream}\n[[upstream.replicas]]\nurl = \"http://10.0.0.1:8000/\"\n"
    )
}

#[test]
fn an_upstream_model_needs_no_weights_and_takes_defaults() {
    let config = Config::from_toml_str(&upstream_config(""), no_env(), Path::new("/")).unwrap();
    let upstream = config.upstream.as_ref().expect("upstream mode");
    assert_eq!(upstream.model, "m");
    assert_eq!(upstream.replicas[0].name, "10.0.0.1:8000");
    assert_eq!(upstream.replicas[0].url, "http://10.0.0.1:8000");
    assert_eq!(upstream.request_timeout, Duration::from_secs(120));
    assert!(upstream.adapter_registration.is_none());
    assert!(config.base_model_dir().is_none());
}

#[test]
fn upstream_mistakes_name_their_key() {
    let cases = [
        ("connect_timeout_ms = 0", "upstream.connect_timeout_ms"),
        ("health_path = \"health\"", "upstream.health_path"),
        (
            "adapter_dir_on_replicas = \"/x\"",
            "upstream.adapter_dir_on_replicas",
        ),
        (
            "api_key_env = \"LORAGATE_TEST_UNSET_VAR\"",
            "upstream.api_key_env",
        ),
        ("replicaz = 1", "upstream.replicaz"),
    ];
    for (line, key) in cases {
        let error =
            Config::from_toml_str(&upstream_config(line), no_env(), Path::new("/")).unwrap_err();
        assert_eq!(key_of(error), key, "{line}");
    }
    let bad_url = "[model]\nserved_name = \"m\"\ncontext_length = 1\n[upstream]\n[[upstream.replicas]]\nurl = \"http://h:1/v1\"\n";
    let error = Config::from_toml_str(bad_url, no_env(), Path::new("/")).unwrap_err();
    assert_eq!(key_of(error), "upstream.replicas[0].url");
    let no_context =
        "[model]\nserved_name = \"m\"\n[upstream]\n[[upstream.replicas]]\nurl = \"http://h:1\"\n";
    let error = Config::from_toml_str(no_context, no_env(), Path::new("/")).unwrap_err();
    assert_eq!(key_of(error), "model.context_length");
    let no_path = "[model]\nserved_name = \"m\"\n";
    let error = Config::from_toml_str(no_path, no_env(), Path::new("/")).unwrap_err();
    assert_eq!(key_of(error), "model.path");
}
