//! Unit tests of `validate`.

use super::*;
use crate::api::extract::parse;
use crate::engine::ModelCard;

fn chat(json: serde_json::Value) -> Result<ValidatedChat, ApiError> {
    ValidatedChat::from_request(parse(json.to_string().as_bytes())?)
}

fn base() -> serde_json::Value {
    serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

fn with(field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut request = base();
    request[field] = value;
    request
}

fn param_of(result: Result<ValidatedChat, ApiError>) -> Option<String> {
    result.expect_err("should be refused").body().error.param
}

fn card(context_length: usize) -> ModelCard {
    ModelCard {
        id: "m".into(),
        created: 0,
        owned_by: "t".into(),
        context_length,
        vocab_size: 100,
        max_token_bytes: 4,
        logprobs: false,
        tools: crate::engine::ToolSupport::Preamble,
    }
}

#[test]
fn accepts_a_plain_request() {
    let validated = chat(base()).unwrap();
    assert_eq!(
        validated.messages,
        vec![PromptMessage::text(Role::User, "hi")]
    );
    assert!(!validated.stream);
}

#[test]
fn out_of_range_parameters_are_named() {
    for (field, value) in [
        ("temperature", serde_json::json!(2.5)),
        ("temperature", serde_json::json!(-0.1)),
        ("top_p", serde_json::json!(0)),
        ("top_p", serde_json::json!(1.5)),
        ("presence_penalty", serde_json::json!(3)),
        ("frequency_penalty", serde_json::json!(-3)),
        ("max_tokens", serde_json::json!(0)),
        ("max_completion_tokens", serde_json::json!(-5)),
        ("n", serde_json::json!(0)),
        ("n", serde_json::json!(129)),
        ("top_logprobs", serde_json::json!(21)),
        ("top_logprobs", serde_json::json!(2)),
        ("logit_bias", serde_json::json!({"abc": 1})),
        ("logit_bias", serde_json::json!({"5": 101})),
        ("stop", serde_json::json!(["a", "b", "c", "d", "e"])),
    ] {
        assert_eq!(
            param_of(chat(with(field, value.clone()))).as_deref(),
            Some(field),
            "{field}={value}"
        );
    }
}

#[test]
fn choices_reserve_a_budget_each_and_are_bounded_in_process() {
    let mut three = chat(with("n", serde_json::json!(3))).unwrap();
    three.fit_model(&card(100)).unwrap();
    assert_eq!(three.choices(), 3);
    assert_eq!(three.wanted_tokens(&card(100), 10, Some(20)), 10 + 3 * 20);
    let request = three.into_request(&card(100), 10, Some(20)).unwrap();
    assert_eq!(request.choices, 3);
    let mut many = chat(with("n", serde_json::json!(9))).unwrap();
    let refused = many
        .fit_model(&card(100))
        .expect_err("over the in-process bound");
    assert_eq!(refused.body().error.param.as_deref(), Some("n"));
    let remote = ModelCard {
        tools: crate::engine::ToolSupport::PassThrough,
        ..card(100)
    };
    let mut many = chat(with("n", serde_json::json!(128))).unwrap();
    many.fit_model(&remote).unwrap();
    assert_eq!(many.into_request(&remote, 1, None).unwrap().choices, 128);
}

#[test]
fn messages_are_checked_one_by_one() {
    assert_eq!(
        param_of(chat(with("messages", serde_json::json!([])))).as_deref(),
        Some("messages")
    );
    let image = serde_json::json!([{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "http://x"}}
    ]}]);
    assert_eq!(
        param_of(chat(with("messages", image))).as_deref(),
        Some("messages[0].content")
    );
    let tool = serde_json::json!([{"role": "tool", "content": "x"}]);
    assert_eq!(
        param_of(chat(with("messages", tool))).as_deref(),
        Some("messages[0].tool_call_id")
    );
    let calls_from_user = serde_json::json!([{"role": "user", "content": "x", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]}]);
    assert_eq!(
        param_of(chat(with("messages", calls_from_user))).as_deref(),
        Some("messages[0].tool_calls")
    );
    let missing_function = with("tools", serde_json::json!([{"type": "function"}]));
    assert!(param_of(chat(missing_function)).is_some_and(|param| param.starts_with("tools")));
    let no_content = serde_json::json!([{"role": "assistant"}]);
    assert_eq!(
        param_of(chat(with("messages", no_content))).as_deref(),
        Some("messages[0].content")
    );
}

#[test]
fn text_parts_are_joined_and_developer_is_system() {
    let parts = serde_json::json!([
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]);
    let validated = chat(with("messages", parts)).unwrap();
    assert_eq!(validated.messages[0].role, Role::System);
    assert_eq!(validated.messages[1].content, "ab");
}

#[test]
fn stream_options_need_stream() {
    let request = with("stream_options", serde_json::json!({"include_usage": true}));
    assert_eq!(param_of(chat(request)).as_deref(), Some("stream_options"));
    let mut request = with("stream", serde_json::json!(true));
    request["stream_options"] = serde_json::json!({"include_usage": true});
    let validated = chat(request).unwrap();
    assert!(validated.stream && validated.include_usage);
}

#[test]
fn max_completion_tokens_wins_over_max_tokens() {
    let mut request = with("max_tokens", serde_json::json!(10));
    request["max_completion_tokens"] = serde_json::json!(3);
    let generation = chat(request)
        .unwrap()
        .into_request(&card(100), 5, None)
        .unwrap();
    assert_eq!(generation.max_tokens, 3);
}

#[test]
fn context_is_enforced_with_prompt_and_completion() {
    let request = with("max_tokens", serde_json::json!(50));
    let error = chat(request)
        .unwrap()
        .into_request(&card(100), 60, None)
        .unwrap_err();
    let body = error.body().error;
    assert_eq!(body.code.as_deref(), Some("context_length_exceeded"));
    assert!(body.message.contains("110"), "{}", body.message);
    // Without max_tokens, the rest of the context is the budget.
    let generation = chat(base())
        .unwrap()
        .into_request(&card(100), 60, None)
        .unwrap();
    assert_eq!(generation.max_tokens, 40);
    let generation = chat(base())
        .unwrap()
        .into_request(&card(100), 60, Some(16))
        .unwrap();
    assert_eq!(generation.max_tokens, 16);
    // A prompt that fills the context leaves no room at all.
    let error = chat(base())
        .unwrap()
        .into_request(&card(100), 100, None)
        .unwrap_err();
    assert_eq!(
        error.body().error.code.as_deref(),
        Some("context_length_exceeded")
    );
}

#[test]
fn logit_bias_must_stay_inside_the_vocabulary() {
    let request = with("logit_bias", serde_json::json!({"100": 5}));
    let error = chat(request)
        .unwrap()
        .into_request(&card(1000), 5, None)
        .unwrap_err();
    assert_eq!(error.body().error.param.as_deref(), Some("logit_bias"));
    let request = with("logit_bias", serde_json::json!({"99": -5}));
    let generation = chat(request)
        .unwrap()
        .into_request(&card(1000), 5, None)
        .unwrap();
    assert_eq!(generation.sampling.logit_bias.get(&99), Some(&-5.0));
}

#[test]
fn response_formats_map_to_constraints() {
    let request = with(
        "response_format",
        serde_json::json!({"type": "json_object"}),
    );
    let generation = chat(request)
        .unwrap()
        .into_request(&card(100), 5, None)
        .unwrap();
    assert_eq!(generation.constraint, OutputConstraint::JsonObject);
    let bad = with(
        "response_format",
        serde_json::json!({"type": "json_schema", "json_schema": {"name": "x"}}),
    );
    assert_eq!(
        param_of(chat(bad)).as_deref(),
        Some("response_format.json_schema.schema")
    );
}

#[test]
fn logprobs_are_refused_where_the_engine_cannot_give_them() {
    let request = with("logprobs", serde_json::json!(true));
    let error = chat(request)
        .unwrap()
        .into_request(&card(100), 5, None)
        .unwrap_err();
    assert_eq!(error.body().error.param.as_deref(), Some("logprobs"));
    let mut request = with("logprobs", serde_json::json!(true));
    request["top_logprobs"] = serde_json::json!(3);
    let honest = ModelCard {
        logprobs: true,
        ..card(100)
    };
    let generation = chat(request)
        .unwrap()
        .into_request(&honest, 5, None)
        .unwrap();
    assert!(generation.sampling.logprobs);
    assert_eq!(generation.sampling.top_logprobs, 3);
}

#[test]
fn a_tool_round_trip_history_is_accepted() {
    let history = serde_json::json!([
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"city\":\"Paris\"}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    ]);
    let validated = chat(with("messages", history)).unwrap();
    assert_eq!(validated.messages[1].tool_calls[0].name, "f");
    assert_eq!(
        validated.messages[2].tool_call_id.as_deref(),
        Some("call_1")
    );
}
