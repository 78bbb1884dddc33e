//! Unit tests of `template`.

use super::*;
use serde_json::{Value as Json, json};

/// Written by scripts/render_reference.py from transformers' own rendering.
const CASES: &str = include_str!("../testdata/chat_cases.json");

fn reference() -> Json {
    serde_json::from_str(CASES).expect("chat_cases.json parses")
}

fn tools_of(case: &Json) -> Option<Vec<Json>> {
    case["tools"].as_array().cloned()
}

/// Compares with the reference outcome; returns a description of any mismatch.
fn check(name: &str, got: Result<String, TemplateError>, expected: &Json) -> Option<String> {
    match (got, expected) {
        (Ok(text), e) if e["ok"].as_str() == Some(text.as_str()) => None,
        (Err(TemplateError::Raised(m)), e) if e["raised"].as_str() == Some(m.as_str()) => None,
        (Err(TemplateError::Render(_)), e) if e.get("error").is_some() => None,
        (got, e) => Some(format!("{name}:\n  got      {got:?}\n  expected {e}")),
    }
}

#[test]
fn renders_exactly_as_transformers() {
    let reference = reference();
    let templates = &reference["templates"];
    let mut failures = Vec::new();
    for case in reference["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let source = templates[case["template"].as_str().expect("template")]
            .as_str()
            .expect("template source");
        // The reference tokenizer defines only the tokens the case gives it.
        let tokens = [
            ("bos_token", &case["bos_token"]),
            ("eos_token", &case["eos_token"]),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
        .collect();
        let template = ChatTemplate::build(vec![(DEFAULT.into(), source.into())], tokens)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let messages = case["messages"].as_array().expect("messages");
        let tools = tools_of(case);
        let got = template.render(
            messages,
            tools.as_deref(),
            case["add_generation_prompt"].as_bool().expect("flag"),
        );
        failures.extend(check(name, got, &case["expected"]));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A unique empty folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "chat-template-test-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn materialise(files: &Json, name: &str) -> TempDir {
    let dir = TempDir::new(name);
    for (rel, content) in files.as_object().expect("file map") {
        let path = dir.0.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, content.as_str().expect("content")).expect("write");
    }
    dir
}

#[test]
fn loads_model_folders_as_transformers_does() {
    let reference = reference();
    let mut failures = Vec::new();
    for case in reference["model_dirs"].as_array().expect("model_dirs") {
        let name = case["name"].as_str().expect("name");
        let dir = materialise(&case["files"], name);
        let loaded = ChatTemplate::from_model_dir(&dir.0);
        for render in case["renders"].as_array().expect("renders") {
            let got = match &loaded {
                Ok(template) => template.render(
                    render["messages"].as_array().expect("messages"),
                    tools_of(render).as_deref(),
                    render["add_generation_prompt"].as_bool().expect("flag"),
                ),
                // transformers only fails at apply time; we fail at load.
                Err(TemplateError::Missing { .. }) if render["expected"].get("error").is_some() => {
                    continue;
                }
                Err(e) => Err(TemplateError::Syntax {
                    name: "load".into(),
                    message: e.to_string(),
                }),
            };
            failures.extend(check(name, got, &render["expected"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn missing_template_error_names_file_and_key() {
    let dir = TempDir::new("missing");
    std::fs::write(
        dir.0.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>"}"#,
    )
    .expect("write");
    let err = ChatTemplate::from_model_dir(&dir.0).expect_err("no template");
    assert!(matches!(err, TemplateError::Missing { .. }), "{err:?}");
    let message = err.to_string();
    for needle in [
        "chat_template.jinja",
        "tokenizer_config.json",
        "`chat_template`",
    ] {
        assert!(message.contains(needle), "{message}");
    }
    assert!(!err.is_client_error());

    // An empty folder is the same error, not an I/O one.
    let empty = TempDir::new("empty");
    assert!(matches!(
        ChatTemplate::from_model_dir(&empty.0),
        Err(TemplateError::Missing { .. })
    ));
}

#[test]
fn bad_config_files_are_errors_not_panics() {
    let dir = TempDir::new("bad-json");
    std::fs::write(dir.0.join("tokenizer_config.json"), "{not json").expect("write");
    assert!(matches!(
        ChatTemplate::from_model_dir(&dir.0),
        Err(TemplateError::Config { .. })
    ));
    std::fs::write(
        dir.0.join("tokenizer_config.json"),
        r#"{"chat_template": "x", "bos_token": 3}"#,
    )
    .expect("write");
    let err = ChatTemplate::from_model_dir(&dir.0).expect_err("bad bos");
    assert!(err.to_string().contains("bos_token"), "{err}");
    std::fs::write(
        dir.0.join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "rag", "template": "x"}]}"#,
    )
    .expect("write");
    let err = ChatTemplate::from_model_dir(&dir.0).expect_err("no usable template");
    assert!(matches!(err, TemplateError::Config { .. }) && err.to_string().contains("rag"));
}

#[test]
fn list_form_with_only_tool_use_needs_tools() {
    let dir = TempDir::new("tool-use-only");
    std::fs::write(
        dir.0.join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "tool_use", "template": "{{ tools | length }}"}]}"#,
    )
    .expect("write");
    let template = ChatTemplate::from_model_dir(&dir.0).expect("loads");
    assert!(template.supports_tools());
    let user = [json!({"role": "user", "content": "hi"})];
    assert_eq!(
        template.render(&user, Some(&[]), false).expect("renders"),
        "0"
    );
    assert!(matches!(
        template.render(&user, None, false),
        Err(TemplateError::Render(_))
    ));
}

#[test]
fn raise_exception_carries_the_message_from_anywhere() {
    let template = ChatTemplate::from_parts(
        "{% macro check(m) %}{% if m.role == 'tool' %}{{ raise_exception('no tools: ' ~ m.content) }}{% endif %}{% endmacro %}\
         {% for m in messages %}{{ check(m) }}{{ m.content | map('upper') | join }}{% endfor %}",
        "<s>",
        "</s>",
    )
    .expect("compiles");
    let err = template
        .render(&[json!({"role": "tool", "content": "ça"})], None, false)
        .expect_err("raises");
    match &err {
        TemplateError::Raised(message) => assert_eq!(message, "no tools: ça"),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.to_string(), "no tools: ça");
    assert!(err.is_client_error());
}

#[test]
fn syntax_errors_surface_at_construction() {
    let err = ChatTemplate::from_parts("{% for m in messages %}", "", "").expect_err("bad");
    assert!(matches!(err, TemplateError::Syntax { .. }), "{err:?}");
    assert!(!err.is_client_error());
}

#[test]
fn runtime_errors_do_not_panic() {
    let template = ChatTemplate::from_parts(
        "{{ messages[0].content.nope.deeper }}{{ 1 / 0 }}{{ x | tojson(bogus=1) }}",
        "",
        "",
    )
    .expect("compiles");
    let user = [json!({"role": "user", "content": "hi"})];
    assert!(matches!(
        template.render(&user, None, true),
        Err(TemplateError::Render(_))
    ));
    let template =
        ChatTemplate::from_parts("{{ {'a': 1} | tojson(bogus=1) }}", "", "").expect("compiles");
    assert!(matches!(
        template.render(&user, None, true),
        Err(TemplateError::Render(_))
    ));
    let template =
        ChatTemplate::from_parts("{{ undefined_thing | tojson }}", "", "").expect("compiles");
    assert!(matches!(
        template.render(&user, None, true),
        Err(TemplateError::Render(_))
    ));
    assert!(matches!(
        template.render(&[json!("just a string")], None, true),
        Err(TemplateError::Render(_))
    ));
}

#[test]
fn strftime_now_formats_local_time() {
    let template = ChatTemplate::from_parts("Today Date: {{ strftime_now('%d %b %Y') }}", "", "")
        .expect("compiles");
    let before = chrono::Local::now().format("%d %b %Y").to_string();
    let got = template.render(&[], None, false).expect("renders");
    let after = chrono::Local::now().format("%d %b %Y").to_string();
    assert!(
        got == format!("Today Date: {before}") || got == format!("Today Date: {after}"),
        "{got}"
    );
    let bad = ChatTemplate::from_parts("{{ strftime_now('%Q %') }}", "", "").expect("compiles");
    assert!(matches!(
        bad.render(&[], None, false),
        Err(TemplateError::Render(_))
    ));
}

#[test]
fn supports_tools_follows_the_template_source() {
    let reference = reference();
    let source = |name: &str| {
        reference["templates"][name]
            .as_str()
            .expect("template")
            .to_string()
    };
    for (name, expected) in [
        ("smollm2", false),
        ("fixture", false),
        ("mistral", false),
        ("llama31", true),
        ("qwen25", true),
    ] {
        let template = ChatTemplate::from_parts(&source(name), "<s>", "</s>").expect("compiles");
        assert_eq!(template.supports_tools(), expected, "{name}");
    }
}

#[test]
fn renders_concurrently_from_one_instance() {
    let template = std::sync::Arc::new(
        ChatTemplate::from_parts(
            reference()["templates"]["qwen25"]
                .as_str()
                .expect("template"),
            "",
            "<|im_end|>",
        )
        .expect("compiles"),
    );
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let template = template.clone();
            std::thread::spawn(move || {
                let messages = [json!({"role": "user", "content": format!("thread {i}")})];
                let mut last = None;
                for _ in 0..50 {
                    last = Some(template.render(&messages, None, true).expect("renders"));
                }
                last
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let out = handle.join().expect("no panic").expect("rendered");
        assert!(out.contains(&format!("thread {i}<|im_end|>")), "{out}");
    }
}

#[test]
fn python_float_repr() {
    for (value, expected) in [
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (1.0, "1.0"),
        (0.1, "0.1"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e16, "1e+16"),
        (1e15, "1000000000000000.0"),
        (123456789012345.6, "123456789012345.6"),
        (1.5e300, "1.5e+300"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-2.5e-7, "-2.5e-07"),
        (f64::NAN, "NaN"),
        (f64::NEG_INFINITY, "-Infinity"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
    ] {
        assert_eq!(py_float(value), expected, "{value:e}");
    }
}

#[test]
fn python_string_repr() {
    let repr = |s: &str| {
        let mut out = String::new();
        py_repr_str(s, &mut out);
        out
    };
    assert_eq!(repr("plain"), "'plain'");
    assert_eq!(repr("it's"), "\"it's\"");
    assert_eq!(repr("both'\""), "'both\\'\"'");
    assert_eq!(
        repr("tab\there\n\u{1}\u{a0}é😀"),
        "'tab\\there\\n\\x01\\xa0é😀'"
    );
}

#[test]
fn generation_tags_are_rewritten_with_their_whitespace_marks() {
    assert_eq!(
        rewrite_generation_tags("a{%- generation -%}b{% endgeneration %}c{%+generation%}"),
        "a{%- if true -%}b{% endif %}c{%+ if true %}"
    );
    let untouched = "{% if generation %}{{ generation }}{% endif %}{% generations %}";
    assert_eq!(rewrite_generation_tags(untouched), untouched);
    assert!(matches!(
        rewrite_generation_tags("no tags"),
        Cow::Borrowed(_)
    ));
}
