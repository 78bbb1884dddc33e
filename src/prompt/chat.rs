//! A model's chat prompt as the gateway builds it: its own chat template
//! rendered exactly as transformers does, then its tokenizer. The rendered
//! text already holds every special token the template wants (BOS included),
//! so tokenizing adds none, as `apply_chat_template` does.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::template::{ChatTemplate, TemplateError};
use crate::engine::{PromptMessage, ToolCallFormat, ToolSupport};

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The template refused the conversation (`raise_exception`): the
    /// client's to fix.
    #[error("{0}")]
    Template(String),
    #[error("tokenizing the prompt failed: {0}")]
    Tokenizer(String),
}

pub struct ChatPrompt {
    template: ChatTemplate,
    tokenizer: Arc<Tokenizer>,
    max_token_bytes: usize,
}

impl ChatPrompt {
    pub fn from_model_dir(dir: &Path) -> anyhow::Result<ChatPrompt> {
        let file = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
        let template = ChatTemplate::from_model_dir(dir)?;
        Ok(ChatPrompt::new(template, tokenizer))
    }

    pub fn new(template: ChatTemplate, tokenizer: Tokenizer) -> ChatPrompt {
        ChatPrompt {
            max_token_bytes: super::max_token_bytes(&tokenizer),
            template,
            tokenizer: Arc::new(tokenizer),
        }
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// The end-of-turn token the template writes, as an id.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.template
            .special_token("eos_token")
            .and_then(|token| self.tokenizer.token_to_id(token))
    }

    pub fn supports_tools(&self) -> bool {
        self.template.supports_tools()
    }

    /// Whether the template renders tools, and how its model writes calls.
    pub fn tool_support(&self) -> ToolSupport {
        if !self.template.supports_tools() {
            return ToolSupport::Preamble;
        }
        ToolSupport::Template(
            self.template
                .tool_source()
                .and_then(|source| tool_call_format(&source)),
        )
    }

    pub fn render(
        &self,
        messages: &[PromptMessage],
        tools: Option<&[Value]>,
    ) -> Result<String, PromptError> {
        let messages: Vec<Value> = messages.iter().map(template_message).collect();
        self.template
            .render(&messages, tools, true)
            .map_err(|error| match error {
                TemplateError::Raised(message) => PromptError::Template(message),
                other => PromptError::Template(other.to_string()),
            })
    }

    /// The prompt's token ids, ready for the model.
    pub fn tokenize(
        &self,
        messages: &[PromptMessage],
        tools: Option<&[Value]>,
    ) -> Result<Vec<u32>, PromptError> {
        let text = self.render(messages, tools)?;
        self.tokenizer
            .encode(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| PromptError::Tokenizer(e.to_string()))
    }
}

/// A message as transformers hands it to a template: tool-call arguments
/// as objects (see [`crate::engine::PromptToolCall::template_json`]).
fn template_message(message: &PromptMessage) -> Value {
    let mut value = message.to_json();
    if !message.tool_calls.is_empty() {
        let calls: Vec<Value> = message
            .tool_calls
            .iter()
            .map(|call| call.template_json())
            .collect();
        value["tool_calls"] = json!(calls);
    }
    value
}

/// The call format a tool-rendering template teaches its model, read from
/// the template's own text.
fn tool_call_format(source: &str) -> Option<ToolCallFormat> {
    if source.contains("<tool_call>") {
        Some(ToolCallFormat::Hermes)
    } else if source.contains("\"parameters\": ") || source.contains("<|python_tag|>") {
        Some(ToolCallFormat::LlamaJson)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_formats_are_read_from_the_template_text() {
        let hermes = "{% for tool in tools %}{{ tool | tojson }}{% endfor %}<tool_call>";
        assert_eq!(tool_call_format(hermes), Some(ToolCallFormat::Hermes));
        let llama =
            r#"{"name": function name, "parameters": dictionary of argument name and its value}"#;
        assert_eq!(tool_call_format(llama), Some(ToolCallFormat::LlamaJson));
        assert_eq!(tool_call_format("{{ tools }}"), None);
    }
}
