//! Any bytes through the key encoding: the result is at most 65 bytes of
//! printable ASCII with no brace, `#` only as the hash marker, and two
//! different values never share an encoding (short of a collision of the
//! 128-bit SHA-256 prefix).
#![no_main]

use axum_redis_ratelimit::fuzzing::encode_value;
use libfuzzer_sys::fuzz_target;

fn check(value: &[u8], secret: bool) -> String {
    let encoded = encode_value(value, secret);
    assert!(encoded.len() <= 65, "{value:?} -> {encoded:?}");
    assert!(!encoded.is_empty());
    assert!(
        encoded
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}'),
        "{value:?} -> {encoded:?}"
    );
    let hashed = encoded.starts_with('#');
    if hashed {
        assert_eq!(encoded.len(), 33, "{encoded:?}");
        assert!(encoded[1..].bytes().all(|b| b.is_ascii_hexdigit()));
    } else {
        assert!(!secret, "a secret in clear: {encoded:?}");
        assert_eq!(encoded.as_bytes(), value, "verbatim means unchanged");
        assert!(!encoded.contains('#'));
    }
    encoded
}

fuzz_target!(|input: (&[u8], &[u8], bool)| {
    let (a, b, secret) = input;
    let (ea, eb) = (check(a, secret), check(b, secret));
    if a != b {
        assert_ne!(ea, eb, "{a:?} and {b:?} share a key");
    } else {
        assert_eq!(ea, eb, "the encoding is a function");
    }
});
