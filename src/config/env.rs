//! `LORAGATE__SECTION__KEY=value` overrides, applied to the parsed TOML table
//! before it is deserialised, so they go through the same strict checks.

use super::{ConfigError, ENV_PREFIX};

pub(super) fn apply_overrides(
    document: &mut toml::Table,
    environment: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in environment {
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
        insert(document, &keys, parse_scalar(&value), &dotted)?;
    }
    Ok(())
}

/// Environment values are untyped: read them as TOML scalars when they parse
/// as such (numbers, booleans), otherwise as strings.
fn parse_scalar(value: &str) -> toml::Value {
    let probe = format!("v = {value}");
    match probe.parse::<toml::Table>() {
        Ok(mut table) => match table.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
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
