//! API keys: generated once, shown once, stored only as SHA-256 hashes and
//! compared in constant time.

use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::config::KeyHash;

/// Prefix that makes a leaked key easy to recognise in logs and scanners.
pub const KEY_PREFIX: &str = "lg-";

/// A fresh random API key (256 bits).
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// Who a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOwner {
    Admin,
    Tenant(String),
}

pub struct KeyRing {
    entries: Vec<(KeyHash, KeyOwner)>,
}

impl KeyRing {
    pub fn new(entries: Vec<(KeyHash, KeyOwner)>) -> KeyRing {
        KeyRing { entries }
    }

    /// Compares the presented key's hash against every stored hash without
    /// stopping early, so timing says nothing about which (or whether) one matched.
    pub fn find(&self, presented: &str) -> Option<&KeyOwner> {
        let hash = KeyHash::of_key(presented);
        let mut found = None;
        for (stored, owner) in &self.entries {
            if bool::from(stored.0.ct_eq(&hash.0)) {
                found = Some(owner);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_unique_and_prefixed() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
    }

    #[test]
    fn ring_finds_only_the_right_owner() {
        let key = generate_key();
        let ring = KeyRing::new(vec![
            (KeyHash::of_key("other"), KeyOwner::Admin),
            (KeyHash::of_key(&key), KeyOwner::Tenant("acme".into())),
        ]);
        assert_eq!(ring.find(&key), Some(&KeyOwner::Tenant("acme".into())));
        assert_eq!(ring.find("lg-wrong"), None);
        assert_eq!(ring.find(""), None);
    }

    #[test]
    fn config_form_round_trips() {
        let hash = KeyHash::of_key("secret");
        assert_eq!(KeyHash::parse(&hash.to_config_string()), Some(hash));
        assert_eq!(KeyHash::parse("md5:abcd"), None);
        assert_eq!(KeyHash::parse("sha256:abcd"), None);
    }
}
