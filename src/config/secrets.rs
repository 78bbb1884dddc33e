//! Secrets from the environment, refused at start-up when they are
//! placeholders: a shipped example value that passes a length check is a
//! shared secret, and a JWT signed with it would carry admin scope.

use super::ConfigError;

/// Values shipped in deploy files, past and present, refused whatever they
/// look like.
const SHIPPED_PLACEHOLDERS: &[&str] = &[
    "REPLACE-ME-with-at-least-32-random-bytes-0000",
    "INVALID-PLACEHOLDER-generate-with-openssl-rand-hex-32",
];

/// Words that mark a value someone typed as an example, not a random secret.
/// Hex and base64 output of a random generator contains none of them in
/// practice (the letters of most never occur in hex at all).
const PLACEHOLDER_WORDS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "replace_me",
    "placeholder",
    "example",
    "secret",
    "insecure",
    "dummy",
    "test",
    "password",
    "default",
];

/// Why a secret is refused; `None` when it looks random enough.
pub fn weakness(value: &str, min_bytes: usize) -> Option<String> {
    if value.len() < min_bytes {
        return Some(format!("it must be at least {min_bytes} bytes"));
    }
    if SHIPPED_PLACEHOLDERS.contains(&value) {
        return Some("it is the placeholder shipped in deploy/".into());
    }
    let lower = value.to_ascii_lowercase();
    if let Some(word) = PLACEHOLDER_WORDS.iter().find(|w| lower.contains(**w)) {
        return Some(format!("it contains the placeholder word `{word}`"));
    }
    if let Some(period) = repeating_period(value.as_bytes()) {
        return Some(format!(
            "it repeats a {period}-character pattern; it is not random"
        ));
    }
    let distinct = {
        let mut seen = [false; 256];
        value.bytes().for_each(|b| seen[b as usize] = true);
        seen.iter().filter(|s| **s).count()
    };
    // `openssl rand -hex 32` gives 16 distinct characters and about 4 bits
    // per character; typed or repeated text falls well below either.
    if distinct < 10 || entropy_bits_per_byte(value.as_bytes()) < 3.0 {
        return Some("it has too little entropy to be random".into());
    }
    None
}

/// The shortest period `p <= len / 2` with `value[i] == value[i + p]` for all i.
fn repeating_period(value: &[u8]) -> Option<usize> {
    (1..=value.len() / 2).find(|&p| value.iter().zip(&value[p..]).all(|(a, b)| a == b))
}

fn entropy_bits_per_byte(value: &[u8]) -> f64 {
    let mut counts = [0usize; 256];
    value.iter().for_each(|b| counts[*b as usize] += 1);
    let total = value.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.log2()
        })
        .sum()
}

/// Reads the secret named by config key `key` from environment variable
/// `variable`, refusing placeholders. The error names both, never the value.
pub fn read(
    environment: &super::env::Environment,
    key: &str,
    variable: &str,
    min_bytes: usize,
) -> Result<String, ConfigError> {
    let value = environment
        .get(variable)
        .filter(|value| !value.is_empty())
        .ok_or_else(|| {
            ConfigError::key(
                key,
                format!("environment variable {variable} is not set (generate a value with `openssl rand -hex 32`)"),
            )
        })?;
    match weakness(value, min_bytes) {
        None => Ok(value.to_string()),
        Some(reason) => Err(ConfigError::key(
            key,
            format!(
                "the secret in environment variable {variable} is refused: {reason}. Generate one with `openssl rand -hex 32`"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_secrets_pass() {
        for value in [
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "q8Zr1VtW4mKpX0yLc7sNfB2hJdG5aE9uRiOwT3kM6nQ",
        ] {
            assert_eq!(weakness(value, 32), None, "{value}");
        }
    }

    #[test]
    fn placeholders_and_patterns_are_refused() {
        let refused = [
            ("REPLACE-ME-with-at-least-32-random-bytes-0000", "shipped"),
            (
                "INVALID-PLACEHOLDER-generate-with-openssl-rand-hex-32",
                "shipped",
            ),
            ("replace-me-with-32-random-bytes-from-a-vault", "replace-me"),
            ("please-change-me-before-production-use!!", "change-me"),
            ("my-super-secret-signing-key-for-loragate", "secret"),
            ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "pattern"),
            (
                "0123456789abcdef0123456789abcdef0123456789abcdef",
                "pattern",
            ),
            ("abcabcabcabcabcabcabcabcabcabcabcabcab", "pattern"),
            ("short", "at least 32"),
            ("1111111111111111222222222222222233333333", "entropy"),
        ];
        for (value, why) in refused {
            let reason = weakness(value, 32).unwrap_or_default();
            assert!(reason.contains(why), "{value}: {reason:?}");
        }
    }
}
