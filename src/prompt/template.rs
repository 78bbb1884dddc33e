//! Hugging Face chat templates, rendered the way `transformers` renders them.
//!
//! A model's prompt format lives in its Jinja chat template, and the model only
//! behaves as trained when the prompt matches what `tokenizer.apply_chat_template`
//! produces byte for byte: one stray space or a differently quoted JSON schema
//! changes the tokens. minijinja gets most of Jinja2 right; this module supplies
//! the rest of what transformers (5.x, `chat_template_utils.py`) does around it:
//!
//! * the environment: `trim_blocks`, `lstrip_blocks`, no trailing newline, loop
//!   controls, Python string/dict methods, `raise_exception`, `strftime_now`, and a
//!   `tojson` that is Python's `json.dumps(ensure_ascii=False)` (not Jinja's
//!   HTML-safe one), with `indent`, `separators`, `sort_keys`, `ensure_ascii`;
//! * Python's way of printing values (`None`, `True`, `1e+20`, `['a', 1]`);
//! * the `{% generation %}` tag of transformers' assistant-mask extension;
//! * the inputs: keys whose value is `null` are dropped from each message,
//!   reasoning is aliased under `thinking`/`reasoning_content`, `tools` and
//!   `documents` are always defined (possibly `None`), and only the special tokens
//!   the tokenizer actually has are defined;
//! * the files: `chat_template.jinja` and `additional_chat_templates/*.jinja` win
//!   over `tokenizer_config.json`, whose template may be a list of named ones.
//!
//! Known gaps, all rare in published templates: `~` and `|join` print containers
//! and floats the Rust way rather than Python's; Python-only methods that
//! minijinja-contrib's `pycompat` lacks fail as unknown methods; a
//! `{% generation %}` body does not get its own variable scope.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior, Value};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// Why a template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template called `raise_exception(message)`: the model's own template
    /// refuses this conversation (e.g. roles that do not alternate). The message is
    /// meant for the client.
    #[error("{0}")]
    Raised(String),
    /// Rendering failed for another reason, nearly always input the template cannot
    /// handle (transformers raises too, e.g. for a message without `content` in a
    /// template that concatenates it).
    #[error("chat template failed to render: {0}")]
    Render(String),
    /// The template source is not valid Jinja.
    #[error("chat template {name} does not compile: {message}")]
    Syntax { name: String, message: String },
    /// The model folder has no chat template at all.
    #[error(
        "no chat template in {}: there is no chat_template.jinja and tokenizer_config.json has no `chat_template` key",
        dir.display()
    )]
    Missing { dir: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A config file is not what transformers would accept.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
}

impl TemplateError {
    /// Whether the request, not the model or the server, caused this: such errors
    /// are a 400 for the client, as they are in transformers-based servers.
    pub fn is_client_error(&self) -> bool {
        matches!(self, TemplateError::Raised(_) | TemplateError::Render(_))
    }
}

/// A compiled chat template together with the special-token variables it sees.
pub struct ChatTemplate {
    env: Environment<'static>,
    has_default: bool,
    has_tool_use: bool,
    /// `bos_token`, `eos_token`, ... as transformers' `special_tokens_map` has them:
    /// a token the tokenizer does not define is left undefined, not empty.
    special_tokens: Vec<(&'static str, String)>,
    uses_tools: bool,
}

// Rendering happens on request threads that share one template.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
};

const DEFAULT: &str = "default";
const TOOL_USE: &str = "tool_use";

/// transformers' `SPECIAL_TOKENS_ATTRIBUTES`, the variables a template may use.
const SPECIAL_TOKEN_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Names under which clients send a message's reasoning; transformers copies the
/// first one present to `thinking` and `reasoning_content`.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

impl ChatTemplate {
    /// Reads a Hugging Face model folder the way `AutoTokenizer.from_pretrained`
    /// does: `chat_template.jinja` (and `additional_chat_templates/*.jinja`) if
    /// present, else `tokenizer_config.json`'s `chat_template`, a string or a list
    /// of `{name, template}` of which `default` is used, and `tool_use` when tools
    /// are passed. `bos_token`/`eos_token` (and the other special tokens) may be
    /// strings or AddedToken objects (`{"content": ...}`).
    pub fn from_model_dir(dir: &Path) -> Result<ChatTemplate, TemplateError> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_if_exists(&config_path)?.unwrap_or_default();

        let mut templates = jinja_files(dir)?;
        if templates.is_empty() {
            templates = config_templates(&config_path, config.get("chat_template"))?;
        }
        if templates.is_empty() {
            return Err(TemplateError::Missing {
                dir: dir.to_path_buf(),
            });
        }
        if !templates.iter().any(|(n, _)| n == DEFAULT || n == TOOL_USE) {
            let names: Vec<&str> = templates.iter().map(|(n, _)| n.as_str()).collect();
            return Err(TemplateError::Config {
                path: dir.to_path_buf(),
                message: format!(
                    "the chat templates {names:?} include neither `default` nor `tool_use`"
                ),
            });
        }

        let mut tokens = special_tokens(&config_path, &config)?;
        // transformers only falls back to the legacy special_tokens_map.json when
        // the config predates `added_tokens_decoder`; then that file wins.
        if !config.contains_key("added_tokens_decoder") {
            let map_path = dir.join("special_tokens_map.json");
            if let Some(map) = read_json_if_exists(&map_path)? {
                for (key, value) in special_tokens(&map_path, &map)? {
                    tokens.retain(|(k, _)| *k != key);
                    tokens.push((key, value));
                }
            }
        }
        Self::build(templates, tokens)
    }

    /// A special token's text as the template sees it (`eos_token`, ...).
    pub fn special_token(&self, key: &str) -> Option<&str> {
        self.special_tokens
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value.as_str())
    }

    /// A template from its source and the tokenizer's BOS/EOS strings.
    pub fn from_parts(
        template: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        Self::build(
            vec![(DEFAULT.to_string(), template.to_string())],
            vec![
                ("bos_token", bos_token.to_string()),
                ("eos_token", eos_token.to_string()),
            ],
        )
    }

    fn build(
        templates: Vec<(String, String)>,
        special_tokens: Vec<(&'static str, String)>,
    ) -> Result<ChatTemplate, TemplateError> {
        let mut env = environment();
        let mut has_default = false;
        let mut has_tool_use = false;
        for (name, source) in templates {
            // Only these two are ever selected; compiling others would just let
            // an unused template's syntax error refuse the model.
            match name.as_str() {
                DEFAULT => has_default = true,
                TOOL_USE => has_tool_use = true,
                _ => continue,
            }
            let source = rewrite_generation_tags(&source).into_owned();
            env.add_template_owned(name.clone(), source)
                .map_err(|e| TemplateError::Syntax {
                    name: name.clone(),
                    message: e.to_string(),
                })?;
        }
        if !has_default && !has_tool_use {
            // from_model_dir reports this with the folder's template names.
            return Err(TemplateError::Syntax {
                name: DEFAULT.into(),
                message: "no `default` or `tool_use` template".into(),
            });
        }
        let uses_tools = has_tool_use
            || env
                .get_template(DEFAULT)
                .is_ok_and(|t| t.undeclared_variables(false).contains("tools"));
        Ok(ChatTemplate {
            env,
            has_default,
            has_tool_use,
            special_tokens,
            uses_tools,
        })
    }

    /// Renders a conversation. `messages` are OpenAI-style message objects,
    /// `tools` the OpenAI `tools` array, passed through unchanged as `tools` (the
    /// JSON schemas transformers expects). Keys are seen in the order given.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        // transformers picks `tool_use` whenever tools is not None, even if empty.
        let name = if tools.is_some() && self.has_tool_use {
            TOOL_USE
        } else if self.has_default {
            DEFAULT
        } else {
            return Err(TemplateError::Render(
                "this model has multiple chat templates and none is named `default`; \
                 it can only be used with tools"
                    .into(),
            ));
        };
        if let Some(bad) = messages.iter().find(|m| !m.is_object()) {
            return Err(TemplateError::Render(format!(
                "chat messages must be objects, got {bad}"
            )));
        }
        let template = self
            .env
            .get_template(name)
            .map_err(|e| TemplateError::Render(e.to_string()))?;

        let tools = tools.map_or(Value::from(()), Value::from_serialize);
        let context: Value = self
            .special_tokens
            .iter()
            .map(|(key, value)| (*key, Value::from(value.as_str())))
            .chain([
                ("messages", Value::from_serialize(Messages(messages))),
                ("tools", tools),
                ("documents", Value::from(())),
                ("add_generation_prompt", Value::from(add_generation_prompt)),
            ])
            .collect();
        template.render(context).map_err(classify)
    }

    /// Whether the template reads `tools` at all (or has a `tool_use` variant);
    /// if not, tools in a request would be silently dropped from the prompt.
    pub fn supports_tools(&self) -> bool {
        self.uses_tools
    }

    /// The source of the template used when tools are passed.
    pub fn tool_source(&self) -> Option<String> {
        let name = if self.has_tool_use { TOOL_USE } else { DEFAULT };
        self.env
            .get_template(name)
            .ok()
            .map(|t| t.source().to_string())
    }
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("has_default", &self.has_default)
            .field("has_tool_use", &self.has_tool_use)
            .field("special_tokens", &self.special_tokens)
            .field("uses_tools", &self.uses_tools)
            .finish_non_exhaustive()
    }
}

// ------------------------------------------------------------------ loading

type JsonMap = serde_json::Map<String, serde_json::Value>;

fn read_json_if_exists(path: &Path) -> Result<Option<JsonMap>, TemplateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TemplateError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TemplateError::Config {
            path: path.to_path_buf(),
            message: format!("not a JSON object: {e}"),
        })
}

fn read_text(path: &Path) -> Result<String, TemplateError> {
    std::fs::read_to_string(path).map_err(|source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// `chat_template.jinja` as `default` plus `additional_chat_templates/NAME.jinja`.
fn jinja_files(dir: &Path) -> Result<Vec<(String, String)>, TemplateError> {
    let mut templates = Vec::new();
    let main = dir.join("chat_template.jinja");
    if main.is_file() {
        templates.push((DEFAULT.to_string(), read_text(&main)?));
    }
    let extra = dir.join("additional_chat_templates");
    if extra.is_dir() {
        let entries = std::fs::read_dir(&extra).map_err(|source| TemplateError::Io {
            path: extra.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| TemplateError::Io {
                    path: extra.clone(),
                    source,
                })?
                .path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(stem) = name.strip_suffix(".jinja") {
                let stem = stem.to_string();
                templates.retain(|(n, _)| *n != stem);
                templates.push((stem, read_text(&path)?));
            }
        }
    }
    Ok(templates)
}

fn config_templates(
    path: &Path,
    value: Option<&serde_json::Value>,
) -> Result<Vec<(String, String)>, TemplateError> {
    let invalid = |what: &str| TemplateError::Config {
        path: path.to_path_buf(),
        message: format!("`chat_template` {what}"),
    };
    match value {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::String(s)) => Ok(vec![(DEFAULT.to_string(), s.clone())]),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .map(|entry| {
                let name = entry.get("name").and_then(|v| v.as_str());
                let template = entry.get("template").and_then(|v| v.as_str());
                match (name, template) {
                    (Some(n), Some(t)) => Ok((n.to_string(), t.to_string())),
                    _ => Err(invalid(
                        "list entries must be {\"name\": ..., \"template\": ...}",
                    )),
                }
            })
            .collect(),
        Some(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(name, t)| match t.as_str() {
                Some(t) => Ok((name.clone(), t.to_string())),
                None => Err(invalid("map values must be strings")),
            })
            .collect(),
        Some(_) => Err(invalid("must be a string or a list of named templates")),
    }
}

fn special_tokens(
    path: &Path,
    config: &JsonMap,
) -> Result<Vec<(&'static str, String)>, TemplateError> {
    let mut tokens = Vec::new();
    for key in SPECIAL_TOKEN_KEYS {
        let content = match config.get(key) {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => match other.get("content").and_then(|c| c.as_str()) {
                Some(s) => s.to_string(),
                None => {
                    return Err(TemplateError::Config {
                        path: path.to_path_buf(),
                        message: format!(
                            "`{key}` must be a string or an AddedToken object with `content`"
                        ),
                    });
                }
            },
        };
        tokens.push((key, content));
    }
    Ok(tokens)
}

// ------------------------------------------------------------------ inputs

/// The messages as transformers hands them to the template: `null` values
/// dropped (so `content: null` is undefined, not `None`), and reasoning copied as
/// `{"thinking": r, **message, "reasoning_content": r}`. Serialised straight into
/// minijinja values, without an intermediate copy.
struct Messages<'a>(&'a [serde_json::Value]);
struct Message<'a>(&'a serde_json::Value);

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for message in self.0 {
            seq.serialize_element(&Message(message))?;
        }
        seq.end()
    }
}

impl Serialize for Message<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(fields) = self.0.as_object() else {
            return self.0.serialize(serializer);
        };
        let present = |key: &str| fields.get(key).filter(|v| !v.is_null());
        let reasoning = REASONING_FIELDS.iter().find_map(|k| present(k));
        let mut map = serializer.serialize_map(None)?;
        if let Some(reasoning) = reasoning {
            map.serialize_entry("thinking", present("thinking").unwrap_or(reasoning))?;
        }
        for (key, value) in fields {
            if value.is_null() || (reasoning.is_some() && key == "thinking") {
                continue;
            }
            match reasoning {
                Some(r) if key == "reasoning_content" => map.serialize_entry(key, r)?,
                _ => map.serialize_entry(key, value)?,
            }
        }
        if let Some(reasoning) = reasoning
            && present("reasoning_content").is_none()
        {
            map.serialize_entry("reasoning_content", reasoning)?;
        }
        map.end()
    }
}

// ------------------------------------------------------------------ environment

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    // jinja2's default `Undefined`: printing and iterating are fine, looking
    // inside it or doing arithmetic with it is an error.
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    // Debug info clones the template source into every error; the gateway only
    // shows the message.
    env.set_debug(false);
    // jinja2 builtins minijinja keeps in contrib (truncate, striptags, joiner, ...).
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_filter("tojson", tojson);
    env.add_filter("string", |value: &Value| py_str(value));
    env.add_test("divisibleby", |value: i64, n: i64| {
        value.checked_rem(n) == Some(0)
    });
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env
}

/// Marks an error as the template's own `raise_exception`, so that its message
/// reaches the client verbatim however deep in macros it was raised.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: &Value) -> Result<Value, Error> {
    let message = py_str(message);
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

fn classify(error: Error) -> TemplateError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = cause {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return TemplateError::Raised(raised.0.clone());
        }
        cause = e.source();
    }
    TemplateError::Render(error.to_string())
}

/// `datetime.now().strftime(format)`: local time, as transformers uses.
fn strftime_now(format: &str) -> Result<String, Error> {
    let mut out = String::new();
    // chrono reports a bad specifier as a fmt error (it would panic in to_string).
    write!(out, "{}", chrono::Local::now().format(format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(out)
}

/// Prints values as Python's `str()` does, which is what jinja2 outputs.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &State,
    value: &Value,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Seq | ValueKind::Map => out.write_str(&py_str(value)).map_err(Error::from),
        ValueKind::Number if !value.is_integer() => {
            out.write_str(&py_str(value)).map_err(Error::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Python's `str(value)`.
fn py_str(value: &Value) -> String {
    match value.as_str() {
        Some(s) => s.to_string(),
        None => {
            let mut out = String::new();
            py_repr(value, &mut out);
            out
        }
    }
}

/// Python's `repr(value)` for the JSON-like values templates handle.
fn py_repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if !value.is_integer() => {
            out.push_str(&py_float(f64::try_from(value.clone()).unwrap_or(f64::NAN)));
        }
        ValueKind::String => py_repr_str(value.as_str().unwrap_or(""), out),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&item, out);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&key, out);
                out.push_str(": ");
                py_repr(&value.get_item(&key).unwrap_or_default(), out);
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// CPython's `unicode_repr`: single quotes unless only double quotes avoid
/// escaping, and escapes for what `str.isprintable()` rejects.
fn py_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !py_printable(c) => {
                let n = u32::from(c);
                let _ = match n {
                    0..=0xff => write!(out, "\\x{n:02x}"),
                    0x100..=0xffff => write!(out, "\\u{n:04x}"),
                    _ => write!(out, "\\U{n:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// `str.isprintable()` for the characters that plausibly reach a template:
/// controls, format characters, separators other than the ASCII space, private
/// use. (Unassigned code points count as printable here.)
fn py_printable(c: char) -> bool {
    !matches!(u32::from(c),
        0x00..=0x1f | 0x7f..=0xa0 | 0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f
        | 0x1680 | 0x180e | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x2064
        | 0x2066..=0x206f | 0x3000 | 0xd800..=0xf8ff | 0xfeff | 0xfff9..=0xfffb
        | 0xe0001 | 0xe0020..=0xe007f | 0xf0000..=0x10ffff)
}

/// Python's `repr(float)`: shortest round-trip digits, positional notation for
/// exponents -5 < e < 16 (always with a fractional part), else `1e+16` style.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits as Python.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-5 < exp) && (exp < 16) {
        let point = exp + 1; // digits before the decimal point
        let s = if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{s}")
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.unsigned_abs())
    }
}

// ------------------------------------------------------------------ tojson

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, with each option settable by position or
/// keyword. Unlike Jinja's own filter it does not HTML-escape `<`, `>`, `&`, `'`.
fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let mut options: [Option<Value>; 4] = Default::default();
    for (slot, name) in options.iter_mut().zip(NAMES) {
        *slot = kwargs.get::<Option<Value>>(name)?;
    }
    for (i, arg) in args.iter().enumerate() {
        if options[i].is_some() {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson got multiple values for argument {:?}", NAMES[i]),
            ));
        }
        options[i] = Some(arg.clone());
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = options;

    let indent = match indent.filter(|v| !v.is_none()) {
        None => None,
        Some(v) if v.is_integer() => Some(" ".repeat(i64::try_from(v)?.max(0) as usize)),
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ));
            }
        },
    };
    let (item_sep, key_sep) = match separators.filter(|v| !v.is_none()) {
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
        Some(v) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match (
                parts.first().and_then(|p| p.as_str()),
                parts.get(1).and_then(|p| p.as_str()),
            ) {
                (Some(item), Some(key)) if parts.len() == 2 => (item.to_string(), key.to_string()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ));
                }
            }
        }
    };
    let mut writer = JsonWriter {
        out: String::new(),
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        depth: 0,
    };
    writer.value(value)?;
    Ok(Value::from(writer.out))
}

struct JsonWriter {
    out: String,
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    depth: usize,
}

impl JsonWriter {
    fn value(&mut self, value: &Value) -> Result<(), Error> {
        match value.kind() {
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if value.is_integer() => {
                let _ = write!(self.out, "{value}");
            }
            ValueKind::Number => self.out.push_str(&py_float(f64::try_from(value.clone())?)),
            ValueKind::String => self.string(value.as_str().unwrap_or("")),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container('[', ']', items.len(), |w, i| w.value(&items[i]))?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.container('{', '}', keys.len(), |w, i| {
                    w.key(&keys[i])?;
                    w.out.push_str(&w.key_sep.clone());
                    w.value(&value.get_item(&keys[i])?)
                })?;
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("Object of type {kind} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }

    /// json.dumps's key coercion: strings as they are, scalars as their JSON text.
    fn key(&mut self, key: &Value) -> Result<(), Error> {
        match key.kind() {
            ValueKind::String => self.string(key.as_str().unwrap_or("")),
            ValueKind::Number | ValueKind::Bool | ValueKind::None => {
                let mut scalar = JsonWriter {
                    out: String::new(),
                    ensure_ascii: false,
                    indent: None,
                    item_sep: String::new(),
                    key_sep: String::new(),
                    sort_keys: false,
                    depth: 0,
                };
                scalar.value(key)?;
                self.string(&scalar.out);
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("keys must be str, int, float, bool or None, not {kind}"),
                ));
            }
        }
        Ok(())
    }

    fn container(
        &mut self,
        open: char,
        close: char,
        len: usize,
        mut item: impl FnMut(&mut Self, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.out.push(open);
        if len == 0 {
            self.out.push(close);
            return Ok(());
        }
        self.depth += 1;
        for i in 0..len {
            if i > 0 {
                let sep = std::mem::take(&mut self.item_sep);
                self.out.push_str(&sep);
                self.item_sep = sep;
            }
            self.newline();
            item(self, i)?;
        }
        self.depth -= 1;
        self.newline();
        self.out.push(close);
        Ok(())
    }

    fn newline(&mut self) {
        if let Some(indent) = &self.indent {
            self.out.push('\n');
            for _ in 0..self.depth {
                self.out.push_str(indent);
            }
        }
    }

    /// Python's `encode_basestring` / `encode_basestring_ascii`.
    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if c < ' ' || (self.ensure_ascii && !(' '..='~').contains(&c)) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(self.out, "\\u{unit:04x}");
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

// ------------------------------------------------------------------ generation tag

/// transformers registers a `{% generation %}...{% endgeneration %}` block that
/// renders its body unchanged (it only records where assistant text lies). The
/// tags become `{% if true %}`/`{% endif %}` with their whitespace-control marks
/// kept, so trimming around them is what Jinja does around the originals.
fn rewrite_generation_tags(source: &str) -> Cow<'_, str> {
    if !source.contains("generation") {
        return Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match generation_tag(tag) {
            Some((len, replacement)) => {
                out.push_str(&replacement);
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// If `tag` (starting at `{%`) is a generation tag: its length and replacement.
fn generation_tag(tag: &str) -> Option<(usize, String)> {
    let bytes = tag.as_bytes();
    let mut i = 2;
    let open_mark = match bytes.get(i) {
        Some(b'-' | b'+') => {
            i += 1;
            &tag[2..3]
        }
        _ => "",
    };
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    let word_start = i;
    while bytes
        .get(i)
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        i += 1;
    }
    let replacement = match &tag[word_start..i] {
        "generation" => "if true",
        "endgeneration" => "endif",
        _ => return None,
    };
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    let close_mark = match bytes.get(i) {
        Some(b'-' | b'+') => {
            i += 1;
            &tag[i - 1..i]
        }
        _ => "",
    };
    tag[i..].starts_with("%}").then(|| {
        (
            i + 2,
            format!("{{%{open_mark} {replacement} {close_mark}%}}"),
        )
    })
}

#[cfg(test)]
mod tests;
