//! Turning an untrusted client value into part of a Redis key.
//!
//! A storage key reads `<prefix><policy>:{<label>:<value>}:<window>`. The
//! braces are a Redis Cluster hash tag, so every counter of one client lands
//! in one slot. The value is client-controlled, so it is written verbatim only
//! when it is short and made of characters that cannot break that shape;
//! anything else (too long, binary, braces, spaces, `#`…) is replaced by `#`
//! and 128 bits of its SHA-256 in hex. A verbatim value never starts with `#`,
//! so a verbatim and a hashed value can never meet, and the length of the part
//! is bounded whatever the client sends.

use sha2::{Digest, Sha256};

/// Longest value written verbatim; longer ones are hashed.
pub const MAX_VERBATIM_LEN: usize = 64;

/// Hex digits of the hash kept: 128 bits.
const HASH_HEX_LEN: usize = 32;

/// Characters that may appear verbatim. No braces (hash tag), no `#` (marks a
/// hash), no glob characters (`*?[]`, so `SCAN MATCH` patterns stay exact), no
/// spaces or control characters (so `redis-cli` output stays readable).
fn is_verbatim(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~:@+/=".contains(&byte)
}

/// Appends `value` to `out` in its key form: verbatim when safe, else hashed;
/// `secret` values (credentials such as agent tokens) are always hashed so
/// they never sit in Redis or in a log in clear.
pub fn push_value(out: &mut String, value: &[u8], secret: bool) {
    let verbatim = !secret
        && !value.is_empty()
        && value.len() <= MAX_VERBATIM_LEN
        && value.iter().copied().all(is_verbatim);
    if verbatim {
        // Every byte is ASCII, checked above.
        out.extend(value.iter().map(|&b| b as char));
    } else {
        let mut hex = [0u8; HASH_HEX_LEN];
        // Cannot fail: the buffer holds exactly two digits per byte.
        let _ = hex::encode_to_slice(&Sha256::digest(value)[..HASH_HEX_LEN / 2], &mut hex);
        out.push('#');
        out.extend(hex.iter().map(|&b| b as char));
    }
}

/// Whether a label or a policy name is safe to put in a key: 1 to 64
/// letters, digits, `-`, `_` and `.`; no braces, `#`, `:`, glob characters
/// or whitespace.
pub fn is_valid_name(name: &str) -> bool {
    is_made_of(name, b"-_.")
}

/// Whether a key prefix is: as a name, and `:` too (`app:rl:`).
pub fn is_valid_prefix(prefix: &str) -> bool {
    is_made_of(prefix, b"-_.:")
}

fn is_made_of(text: &str, punctuation: &[u8]) -> bool {
    !text.is_empty()
        && text.len() <= MAX_VERBATIM_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || punctuation.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(value: &[u8], secret: bool) -> String {
        let mut out = String::new();
        push_value(&mut out, value, secret);
        out
    }

    #[test]
    fn safe_short_values_stay_readable() {
        assert_eq!(encode(b"AGENT-ABC123", false), "AGENT-ABC123");
        assert_eq!(encode(b"2001:db8::1", false), "2001:db8::1");
        assert_eq!(encode(b"dGVzdA+/==", false), "dGVzdA+/==");
    }

    #[test]
    fn unsafe_values_are_hashed_and_bounded() {
        let huge = vec![b'a'; 1 << 20];
        for value in [
            &b"a}b"[..],
            b"{tag}",
            b"#0123",
            b"with space",
            b"\xff\xfe",
            b"",
            b"*",
            &huge,
        ] {
            let key = encode(value, false);
            assert!(key.starts_with('#'), "{key}");
            assert_eq!(key.len(), 1 + HASH_HEX_LEN);
            assert!(key[1..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn secrets_are_always_hashed() {
        let key = encode(b"AGENT-ABC123", true);
        assert!(key.starts_with('#') && !key.contains("ABC"));
        assert_ne!(key, encode(b"AGENT-ABC124", true));
    }

    #[test]
    fn names_reject_key_syntax() {
        assert!(is_valid_name("telemetry"));
        assert!(is_valid_prefix("rl:"));
        assert!(!is_valid_name("a:b"));
        for bad in ["", "a b", "a{b", "a}", "a#", "a*", &"x".repeat(65)] {
            assert!(!is_valid_name(bad) && !is_valid_prefix(bad), "{bad}");
        }
    }
}
