//! `LORAGATE__SECTION__KEY=value` overrides, applied to the parsed TOML table
//! before it is deserialised, so they go through the same strict checks; and
//! the environment secrets are read from, injected so tests need not touch
//! the process's own.

use super::{ConfigError, ENV_PREFIX};

/// The variables a configuration is resolved against.
#[derive(Debug, Clone, Default)]
pub struct Environment(Vec<(String, String)>);

impl Environment {
    pub fn new(variables: impl IntoIterator<Item = (String, String)>) -> Environment {
        Environment(variables.into_iter().collect())
    }

    /// The last value set for `name`, as a shell's environment would hold it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

pub(super) fn apply_overrides(
    document: &mut toml::Table,
    environment: &Environment,
) -> Result<(), ConfigError> {
    for (name, value) in &environment.0 {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
        let dotted = keys.join(".");
        if keys.iter().any(String::is_empty) {
            return Err(ConfigError::key(
                &dotted,
                format!("malformed variable {name}"),
            ));
        }
        insert(document, &keys, parse_scalar(value), &dotted)?;
    }
    Ok(())
}

/// Environment values are untyped: read them as TOML values when they parse
/// as numbers, booleans or arrays (so lists such as
/// `LORAGATE__AUTH__ADMIN_API_KEYS='["sha256:…"]'` and whole
/// `LORAGATE__TENANTS='[{id = "acme", api_keys = ["sha256:…"]}]'` can come
/// from a container's environment), otherwise as strings (`[::1]:8080` is not
/// valid TOML, so it stays a string).
fn parse_scalar(value: &str) -> toml::Value {
    let probe = format!("v = {value}");
    match probe.parse::<toml::Table>() {
        Ok(mut table) => match table.remove("v") {
            Some(
                v @ (toml::Value::Integer(_)
                | toml::Value::Float(_)
                | toml::Value::Boolean(_)
                | toml::Value::Array(_)),
            ) => v,
            _ => toml::Value::String(value.to_string()),
        },
        Err(_) => toml::Value::String(value.to_string()),
    }
}

fn insert(
    table: &mut toml::Table,
    keys: &[String],
    value: toml::Value,
    dotted: &str,
) -> Result<(), ConfigError> {
    match keys {
        [] => Ok(()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => insert(inner, rest, value, dotted),
                _ => Err(ConfigError::key(
                    dotted,
                    format!("`{first}` is not a section"),
                )),
            }
        }
    }
}
