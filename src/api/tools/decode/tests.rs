//! Unit tests of `decode`.

use super::*;

/// Feeds `text` in pieces of `step` bytes (at char boundaries) and joins
/// what comes out: (content, [(name, arguments)]).
fn run(mode: OutputMode, text: &str, step: usize) -> (String, Vec<(String, String)>) {
    let mut decoder = OutputDecoder::new(mode);
    let mut pieces = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    for chunk in chars.chunks(step) {
        pieces.extend(decoder.push(&chunk.iter().collect::<String>()));
    }
    pieces.extend(decoder.finish());
    let mut content = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => content.push_str(&text),
            Piece::CallStart { index, id, name } => {
                assert_eq!(index, calls.len(), "calls start in order");
                assert!(id.starts_with("call_") && id.len() == 29, "{id}");
                calls.push((name, String::new()));
            }
            Piece::CallArguments { index, text } => calls[index].1.push_str(&text),
        }
    }
    (content, calls)
}

#[test]
fn forced_arguments_are_the_whole_text_in_any_split() {
    for step in [1, 3, 100] {
        let mode = OutputMode::Arguments { name: "f".into() };
        let (content, calls) = run(mode, r#"{"city": "Paris"}"#, step);
        assert_eq!(content, "");
        assert_eq!(calls, vec![("f".into(), r#"{"city": "Paris"}"#.into())]);
    }
    let (_, calls) = run(OutputMode::Arguments { name: "f".into() }, "", 1);
    assert_eq!(
        calls,
        vec![("f".into(), String::new())],
        "a call even when cut off"
    );
}

#[test]
fn required_calls_split_name_and_arguments_in_any_split() {
    let text = "{\"name\": \"get_weather\", \"arguments\": {\"where\": {\"city\": \"Paris\"}} }";
    for step in [1, 2, 7, 1000] {
        let (content, calls) = run(OutputMode::Call, text, step);
        assert_eq!(content, "");
        assert_eq!(calls.len(), 1, "step {step}");
        assert_eq!(calls[0].0, "get_weather");
        let arguments: Value = serde_json::from_str(&calls[0].1).unwrap();
        assert_eq!(arguments["where"]["city"], "Paris", "step {step}");
    }
    // A function named like the key itself.
    let (_, calls) = run(
        OutputMode::Call,
        r#"{"name":"arguments","arguments":{}}"#,
        1,
    );
    assert_eq!(calls, vec![("arguments".into(), "{}".into())]);
}

#[test]
fn hermes_calls_are_parsed_and_text_around_them_kept() {
    let mode = OutputMode::Parse {
        format: ToolCallFormat::Hermes,
        parallel: true,
    };
    let text = "Let me look.<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call>";
    for step in [1, 5, 1000] {
        let (content, calls) = run(mode.clone(), text, step);
        assert_eq!(content, "Let me look.");
        assert_eq!(
            calls,
            vec![("f".into(), r#"{"a":1}"#.into()), ("g".into(), "{}".into())]
        );
    }
    let single = OutputMode::Parse {
        format: ToolCallFormat::Hermes,
        parallel: false,
    };
    assert_eq!(
        run(single, text, 3).1.len(),
        1,
        "parallel_tool_calls: false"
    );
    let (content, calls) = run(mode.clone(), "a < b <tool", 1);
    assert_eq!((content.as_str(), calls.len()), ("a < b <tool", 0));
    let (content, calls) = run(mode, "<tool_call>not json</tool_call>", 4);
    assert_eq!(
        content, "<tool_call>not json</tool_call>",
        "unparsable stays text"
    );
    assert!(calls.is_empty());
}

#[test]
fn llama_json_calls_are_parsed_and_plain_answers_pass() {
    let mode = OutputMode::Parse {
        format: ToolCallFormat::LlamaJson,
        parallel: true,
    };
    let (content, calls) = run(
        mode.clone(),
        r#"  {"name": "f", "parameters": {"x": "y"}}"#,
        2,
    );
    assert_eq!(content, "");
    assert_eq!(calls, vec![("f".into(), r#"{"x":"y"}"#.into())]);
    let (_, calls) = run(
        mode.clone(),
        r#"<|python_tag|>{"name": "f", "parameters": {}}; {"name": "g", "parameters": {}}"#,
        3,
    );
    assert_eq!(calls.len(), 2);
    let (content, calls) = run(mode, "Paris is the capital. {json}", 2);
    assert_eq!(content, "Paris is the capital. {json}");
    assert!(calls.is_empty());
}

#[test]
fn remote_calls_pass_through() {
    let mut decoder = OutputDecoder::new(OutputMode::Remote);
    let first = decoder.remote_call(ToolCallDelta {
        choice: 0,
        index: 0,
        id: Some("call_x".into()),
        name: Some("f".into()),
        arguments: String::new(),
    });
    assert_eq!(first.len(), 1);
    assert!(decoder.called());
    let more = decoder.remote_call(ToolCallDelta {
        choice: 0,
        index: 0,
        id: None,
        name: None,
        arguments: "{}".into(),
    });
    assert_eq!(
        more,
        vec![Piece::CallArguments {
            index: 0,
            text: "{}".into()
        }]
    );
}
