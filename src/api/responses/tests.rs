//! Unit tests of `responses`.

use super::*;
use crate::api::extract::parse;

fn request(json: Value) -> Result<(ChatCompletionRequest, Echo), ApiError> {
    translate(parse::<CreateResponseRequest>(json.to_string().as_bytes())?)
}

fn param_of(json: Value) -> Option<String> {
    request(json).err().expect("refused").body().error.param
}

#[test]
fn stored_and_continued_responses_are_refused_by_name() {
    let store = json!({"model": "m", "input": "hi", "store": true});
    assert_eq!(param_of(store).as_deref(), Some("store"));
    let previous = json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"});
    assert_eq!(param_of(previous).as_deref(), Some("previous_response_id"));
    let image = json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]});
    assert_eq!(param_of(image).as_deref(), Some("input[0].content[0]"));
    let search = json!({"model": "m", "input": [{"type": "web_search_call"}]});
    assert_eq!(param_of(search).as_deref(), Some("input[0].type"));
    assert!(request(json!({"model": "m", "input": "hi", "store": false})).is_ok());
}

#[test]
fn items_become_chat_messages() {
    let (chat, echo) = request(json!({
        "model": "m",
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}", "id": "fc_1", "status": "completed"},
            {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok", "annotations": []}]}
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        "max_output_tokens": 7
    }))
    .unwrap();
    let roles: Vec<MessageRole> = chat.messages.iter().map(|m| m.role).collect();
    use MessageRole::*;
    assert_eq!(roles, [System, User, Assistant, Tool, Assistant]);
    assert_eq!(chat.messages[2].tool_calls.as_ref().unwrap().len(), 2);
    assert_eq!(chat.messages[3].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(chat.max_completion_tokens, Some(7));
    assert!(matches!(chat.tool_choice, Some(ToolChoice::Named(_))));
    assert_eq!(
        chat.response_format.unwrap().kind,
        ResponseFormatKind::JsonSchema
    );
    assert_eq!(echo.tool_choice, json!({"type": "function", "name": "f"}));
    let validated =
        ValidatedChat::from_request(request(json!({"model": "m", "input": "hi"})).unwrap().0);
    assert!(validated.is_ok());
}

#[test]
fn a_cut_off_answer_is_incomplete() {
    let echo = request(json!({"model": "m", "input": "hi"})).unwrap().1;
    let shell = echo.shell("chatcmpl-abc", 1, "m");
    assert_eq!(shell.id, "resp_abc");
    let usage = TokenUsage {
        prompt_tokens: 3,
        completion_tokens: 2,
    };
    let done = complete(shell.clone(), "length", usage);
    assert_eq!(done.status, "incomplete");
    assert_eq!(done.usage.unwrap().total_tokens, 5);
    assert_eq!(complete(shell, "tool_calls", usage).status, "completed");
}
