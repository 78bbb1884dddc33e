//! Unit tests of `config`.

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
    assert_eq!(config.server.shutdown_timeout, Duration::from_secs(30));
}

#[test]
fn the_shutdown_grace_is_configurable_and_a_section_keeps_its_other_defaults() {
    let file = model_file();
    let text = format!(
        "[server]
shutdown_timeout_secs = 5
{}",
        minimal(file.path())
    );
    let config = Config::from_toml_str(&text, no_env(), Path::new("/")).unwrap();
    assert_eq!(config.server.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(config.server.max_body_bytes, 4 * 1024 * 1024);
    let environment = vec![(
        "LORAGATE__SERVER__SHUTDOWN_TIMEOUT_SECS".to_string(),
        "7".to_string(),
    )];
    let config = Config::from_toml_str(&minimal(file.path()), environment, Path::new("/")).unwrap();
    assert_eq!(config.server.shutdown_timeout, Duration::from_secs(7));
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

#[test]
fn the_shared_base_engine_pages_on_cpu_with_one_pool_size() {
    let dir = tempfile::tempdir().expect("model folder");
    std::fs::write(dir.path().join("config.json"), "{}").expect("config.json");
    let paged = |extra: &str| {
        format!(
            "[model]\nserved_name = \"m\"\npath = \"{}\"\nformat = \"safetensors\"\n{extra}[model.paged_attention]\nenabled = true\nblock_size = 16\ncontext_tokens = 4096\n",
            dir.path().display()
        )
    };
    let config = Config::from_toml_str(&paged(""), no_env(), Path::new("/")).unwrap();
    assert_eq!(config.model.engine, EngineKind::SharedBase);
    assert_eq!(
        config.model.paged_attention,
        Some(PagedAttention {
            block_size: 16,
            context_tokens: 4096
        })
    );
    let both = paged("kv_cache_mib = 64\n");
    let error = Config::from_toml_str(&both, no_env(), Path::new("/")).unwrap_err();
    assert_eq!(key_of(error), "model.kv_cache_mib");
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

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn open_mode_off_loopback_needs_its_named_option() {
    let file = model_file();
    let open = |bind: &str, extra: &str| {
        format!(
            "{}[server]\nbind = \"{bind}\"\n[auth]\nenabled = false\n{extra}",
            minimal(file.path())
        )
    };
    let error =
        Config::from_toml_str(&open("0.0.0.0:8080", ""), no_env(), Path::new("/")).unwrap_err();
    assert!(error.to_string().contains("0.0.0.0:8080"), "{error}");
    assert_eq!(key_of(error), "auth.allow_open_on_public_bind");
    // The environment override that containers use is caught the same way.
    let error = Config::from_toml_str(
        &open("127.0.0.1:8080", ""),
        env(&[("LORAGATE__SERVER__BIND", "[::]:8080")]),
        Path::new("/"),
    )
    .unwrap_err();
    assert_eq!(key_of(error), "auth.allow_open_on_public_bind");
    for (bind, extra) in [
        ("127.0.0.1:8080", ""),
        ("127.0.0.2:8080", ""),
        ("[::1]:8080", ""),
        ("0.0.0.0:8080", "allow_open_on_public_bind = true\n"),
    ] {
        let config = Config::from_toml_str(&open(bind, extra), no_env(), Path::new("/"));
        assert!(config.is_ok(), "{bind} {extra}: {:?}", config.err());
    }
}

#[test]
fn lists_come_from_the_environment_as_toml() {
    let file = model_file();
    let (admin, acme) = ("a".repeat(64), "b".repeat(64));
    let config = Config::from_toml_str(
        &minimal(file.path()),
        env(&[
            ("LORAGATE__AUTH__ADMIN_API_KEYS", &format!("[\"sha256:{admin}\"]")),
            (
                "LORAGATE__TENANTS",
                &format!("[{{id = \"acme\", api_keys = [\"sha256:{acme}\"], limits = {{requests_per_minute = 7}}}}]"),
            ),
        ]),
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(config.auth.admin_keys.len(), 1);
    assert_eq!(config.tenants[0].id, "acme");
    assert_eq!(config.tenants[0].limits.requests_per_minute, Some(7));
    // An IPv6 bind is not TOML: it stays a string.
    let config = Config::from_toml_str(
        &minimal(file.path()),
        env(&[("LORAGATE__SERVER__BIND", "[::1]:9000")]),
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(config.server.bind.to_string(), "[::1]:9000");
}

#[test]
fn metrics_access_is_validated() {
    let file = model_file();
    let with = |metrics: &str| format!("{}[metrics]\n{metrics}\n", minimal(file.path()));
    let token = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let config = Config::from_toml_str(
        &with("bearer_token_env = \"SCRAPE\"\nbind = \"127.0.0.1:9464\""),
        env(&[("SCRAPE", token)]),
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(config.metrics.bearer_token, Some(KeyHash::of_key(token)));
    assert_eq!(config.metrics.bind.map(|b| b.port()), Some(9464));
    let cases = [
        (
            "bearer_token_env = \"SCRAPE\"",
            vec![],
            "metrics.bearer_token_env",
        ),
        (
            "bearer_token_env = \"SCRAPE\"",
            env(&[("SCRAPE", "changeme-changeme-changeme-changeme")]),
            "metrics.bearer_token_env",
        ),
        ("bind = \"nowhere\"", vec![], "metrics.bind"),
        ("bind = \"0.0.0.0:8080\"", vec![], "metrics.bind"),
    ];
    for (metrics, environment, key) in cases {
        let error = Config::from_toml_str(&with(metrics), environment, Path::new("/")).unwrap_err();
        assert_eq!(key_of(error), key, "{metrics}");
    }
}

#[test]
fn a_placeholder_jwt_secret_is_refused_by_key_and_variable() {
    let file = model_file();
    let text = format!(
        "{}[auth.jwt]\nalgorithms = [\"HS256\"]\nhs256_secret_env = \"JWT\"\nissuer = \"i\"\naudience = \"a\"\n",
        minimal(file.path())
    );
    let error = Config::from_toml_str(
        &text,
        env(&[("JWT", "REPLACE-ME-with-at-least-32-random-bytes-0000")]),
        Path::new("/"),
    )
    .unwrap_err();
    assert!(error.to_string().contains("JWT"), "{error}");
    assert_eq!(key_of(error), "auth.jwt.hs256_secret_env");
    let random = "q8Zr1VtW4mKpX0yLc7sNfB2hJdG5aE9uRiOwT3kM6nQ";
    let config = Config::from_toml_str(&text, env(&[("JWT", random)]), Path::new("/")).unwrap();
    assert_eq!(
        config.auth.jwt.and_then(|jwt| jwt.hs256_secret),
        Some(random.as_bytes().to_vec())
    );
}

fn seed_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::write(dir.path().join(file), b"{}").expect("write");
    }
    dir
}

#[test]
fn adapter_seeds_resolve_their_folder_and_default_to_the_open_caller() {
    let (file, folder) = (model_file(), seed_folder());
    let text = format!(
        "{}[auth]\nenabled = false\n[[adapters.seed]]\nname = \"pirate\"\npath = \"{}\"\n",
        minimal(file.path()),
        folder.path().display()
    );
    let config = Config::from_toml_str(&text, no_env(), Path::new("/")).unwrap();
    assert_eq!(
        config.adapters.seeds,
        vec![AdapterSeed {
            tenant: "anonymous".into(),
            name: "pirate".into(),
            dir: folder.path().to_path_buf(),
            shared: false,
        }]
    );
}

#[test]
fn adapter_seeds_are_refused_by_key() {
    let (file, folder) = (model_file(), seed_folder());
    let seed = |fields: &str| {
        format!(
            "{}[auth]\nenabled = false\n[[adapters.seed]]\n{fields}\n",
            minimal(file.path())
        )
    };
    let path = folder.path().display().to_string();
    let cases = [
        (
            seed(&format!("name = \"UPPER\"\npath = \"{path}\"")),
            "adapters.seed[0].name",
        ),
        (
            seed(&format!("name = \"m\"\npath = \"{path}\"")),
            "adapters.seed[0].name",
        ),
        (
            seed("name = \"pirate\"\npath = \"/nonexistent/folder\""),
            "adapters.seed[0].path",
        ),
        (
            seed(&format!(
                "tenant = \"nobody\"\nname = \"pirate\"\npath = \"{path}\""
            )),
            "adapters.seed[0].tenant",
        ),
        (
            format!(
                "{}[auth]\nenabled = false\n[[adapters.seed]]\nname = \"pirate\"\npath = \"{path}\"\n[[adapters.seed]]\nname = \"pirate\"\npath = \"{path}\"\n",
                minimal(file.path())
            ),
            "adapters.seed[1].name",
        ),
    ];
    for (text, key) in cases {
        let error = Config::from_toml_str(&text, no_env(), Path::new("/")).unwrap_err();
        assert_eq!(key_of(error), key, "{text}");
    }
}

#[test]
fn the_shipped_configs_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for name in ["default.toml", "gguf.toml"] {
        let text = std::fs::read_to_string(dir.join(name)).expect("read config");
        // The model files are fetched later; only their existence is checked,
        // so point the model at a file that exists.
        let (file, folder) = (model_file(), tempfile::tempdir().expect("temp dir"));
        std::fs::write(folder.path().join("config.json"), b"{}").expect("write");
        let model = match name {
            "gguf.toml" => file.path().to_path_buf(),
            _ => folder.path().to_path_buf(),
        };
        let text = text
            .lines()
            .map(|line| {
                if line.starts_with("path = \"~/") {
                    format!("path = \"{}\"", model.display())
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = Config::from_toml_str(&text, no_env(), &dir)
            .unwrap_or_else(|e| panic!("config/{name}: {e}"));
        if name == "default.toml" {
            let names: Vec<&str> = config
                .adapters
                .seeds
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(names, ["pirate", "support", "shouty"]);
        }
    }
}

#[test]
fn the_prefix_cache_is_refused_where_it_panics_the_engine() {
    let file = model_file();
    let text = format!("{}prefix_cache_entries = 16\n", minimal(file.path()));
    let error = Config::from_toml_str(&text, no_env(), Path::new("/")).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("model.prefix_cache_entries"), "{message}");
    assert!(
        message.contains("mistral.rs 0.8.1") && message.contains("kv_cache/mod.rs:329"),
        "the refusal names the engine bug: {message}"
    );
    // The same through the environment, as a deployment would override it.
    let error = Config::from_toml_str(
        &minimal(file.path()),
        env(&[("LORAGATE__MODEL__PREFIX_CACHE_ENTRIES", "4")]),
        Path::new("/"),
    )
    .unwrap_err();
    assert_eq!(key_of(error), "model.prefix_cache_entries");
    let off = format!("{}prefix_cache_entries = 0\n", minimal(file.path()));
    let config = Config::from_toml_str(&off, no_env(), Path::new("/")).unwrap();
    assert_eq!(config.model.prefix_cache_entries, 0);
    assert_eq!(
        Config::from_toml_str(&minimal(file.path()), no_env(), Path::new("/"))
            .unwrap()
            .model
            .prefix_cache_entries,
        0,
        "off by default"
    );
}

#[test]
fn the_prefix_cache_policy_allows_only_paged_mistralrs() {
    assert!(prefix_cache_supported(EngineKind::Mistralrs, true).is_ok());
    assert!(prefix_cache_supported(EngineKind::Mistralrs, false).is_err());
    assert!(prefix_cache_supported(EngineKind::SharedBase, false).is_err());
    assert!(prefix_cache_supported(EngineKind::SharedBase, true).is_err());
}

#[test]
fn the_shipped_configs_keep_the_prefix_cache_off() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "config/default.toml",
        "config/gguf.toml",
        "deploy/config/container.toml",
        "deploy/kubernetes/base/configmap.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("shipped config");
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("prefix_cache_entries"))
        {
            assert!(line.trim_end().ends_with("= 0"), "{file}: {line}");
        }
    }
}
