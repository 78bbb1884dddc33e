//! Unit tests of `tools`.

use super::*;
use crate::api::tools::wire::{FunctionName, NamedToolChoice, ToolKind};
use crate::engine::{PromptToolCall, ToolCallFormat};

fn tool(name: &str) -> Tool {
    serde_json::from_value(json!({
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    }))
    .unwrap()
}

fn request(choice: Option<ToolChoice>) -> ToolRequest {
    ToolRequest::from_wire(Some(vec![tool("f"), tool("g")]), choice, None)
        .unwrap()
        .unwrap()
}

fn named(name: &str) -> ToolChoice {
    ToolChoice::Named(NamedToolChoice {
        kind: ToolKind::Function,
        function: FunctionName { name: name.into() },
    })
}

#[test]
fn shape_errors_name_the_parameter() {
    let param = |e: ApiError| e.body().error.param;
    let e = ToolRequest::from_wire(None, Some(ToolChoice::Mode(ToolChoiceMode::Auto)), None);
    assert_eq!(param(e.unwrap_err()).as_deref(), Some("tool_choice"));
    let e = ToolRequest::from_wire(Some(vec![tool("f"), tool("f")]), None, None);
    assert_eq!(
        param(e.unwrap_err()).as_deref(),
        Some("tools[1].function.name")
    );
    let e = ToolRequest::from_wire(Some(vec![tool("bad name")]), None, None);
    assert!(e.is_err());
    let e = ToolRequest::from_wire(Some(vec![tool("f")]), Some(named("h")), None);
    assert_eq!(param(e.unwrap_err()).as_deref(), Some("tool_choice"));
    assert!(ToolRequest::from_wire(None, None, None).unwrap().is_none());
}

#[test]
fn forced_calls_are_constrained_on_every_in_process_model() {
    for support in [
        ToolSupport::Preamble,
        ToolSupport::Template(None),
        ToolSupport::Template(Some(ToolCallFormat::Hermes)),
    ] {
        let plan = super::plan(Some(&request(Some(named("g")))), support, false).unwrap();
        assert_eq!(plan.output, OutputMode::Arguments { name: "g".into() });
        let Some(OutputConstraint::JsonSchema(schema)) = plan.constraint else {
            panic!("named calls are constrained");
        };
        assert_eq!(schema["properties"]["city"]["type"], "string");
        assert_eq!(plan.preamble.is_some(), support == ToolSupport::Preamble);
        assert_eq!(
            plan.template_tools.is_some(),
            support != ToolSupport::Preamble
        );

        let choice = Some(ToolChoice::Mode(ToolChoiceMode::Required));
        let plan = super::plan(Some(&request(choice)), support, false).unwrap();
        assert_eq!(plan.output, OutputMode::Call);
        let Some(OutputConstraint::JsonSchema(schema)) = plan.constraint else {
            panic!("required calls are constrained");
        };
        assert_eq!(schema["anyOf"][1]["properties"]["name"]["const"], "g");
        let keys: Vec<&String> = schema["anyOf"][0]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["name", "arguments"], "the name comes first");
    }
}

#[test]
fn auto_needs_a_readable_template_format() {
    let auto = request(None);
    let refused = super::plan(Some(&auto), ToolSupport::Preamble, false).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("chat template declares no tool-call format")
    );
    assert!(super::plan(Some(&auto), ToolSupport::Template(None), false).is_err());
    let format = ToolCallFormat::Hermes;
    let plan = super::plan(Some(&auto), ToolSupport::Template(Some(format)), false).unwrap();
    assert!(plan.constraint.is_none());
    assert!(matches!(plan.output, OutputMode::Parse { .. }));
    let none = request(Some(ToolChoice::Mode(ToolChoiceMode::None)));
    let plan = super::plan(Some(&none), ToolSupport::Preamble, false).unwrap();
    assert_eq!(plan.output, OutputMode::Text);
    assert!(super::plan(Some(&auto), ToolSupport::Template(Some(format)), true).is_err());
}

#[test]
fn replicas_get_the_fields_as_sent() {
    let plan = super::plan(
        Some(&request(Some(named("f")))),
        ToolSupport::PassThrough,
        true,
    )
    .unwrap();
    assert_eq!(plan.output, OutputMode::Remote);
    assert!(plan.constraint.is_none());
    assert_eq!(plan.passthrough["tool_choice"]["function"]["name"], "f");
    assert_eq!(plan.passthrough["tools"][1]["function"]["name"], "g");
}

#[test]
fn history_without_template_tools_is_written_as_text() {
    let call = PromptMessage {
        tool_calls: vec![PromptToolCall {
            id: "call_1".into(),
            name: "f".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }],
        ..PromptMessage::text(Role::Assistant, "")
    };
    let result = PromptMessage {
        tool_call_id: Some("call_1".into()),
        ..PromptMessage::text(Role::Tool, "sunny")
    };
    let flat = flatten_history(vec![call, result]);
    assert_eq!(
        flat[0].content,
        r#"{"name":"f","arguments":{"city":"Paris"}}"#
    );
    assert_eq!(flat[1].role, Role::User);
    assert!(flat[1].content.contains("f (call call_1)") && flat[1].content.ends_with("sunny"));
    assert!(
        flat.iter()
            .all(|m| m.tool_calls.is_empty() && m.tool_call_id.is_none())
    );
}
