//! Arbitrary `X-Agent-Token` headers through `Key::header`: the data holds
//! two requests separated by a NUL byte (which no header value can hold),
//! each a list of header lines separated by `\n` (ditto). Only one line has
//! a key (several are refused). Every storage key
//! has exactly one hash tag, `{` first and `}` last, is bounded, and two
//! requests with different header lines never share a key.
#![no_main]

use axum_redis_ratelimit::{
    Key,
    fuzzing::{request_parts, storage_key},
};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "x-agent-token";
/// `{` + label + `:` + 64 verbatim bytes + `}`.
const MAX_LEN: usize = 1 + NAME.len() + 1 + 64 + 1;

fn lines(request: &[u8]) -> Vec<&[u8]> {
    request.split(|&b| b == b'\n').collect()
}

fn key_of(key: &Key, values: &[&[u8]]) -> Option<Option<String>> {
    let headers: Vec<(&str, &[u8])> = values.iter().map(|v| (NAME, *v)).collect();
    let parts = request_parts(&headers)?;
    let written = storage_key(key, &parts);
    match &written {
        None => assert!(
            values == [b""] || values.len() > 1,
            "only an empty or a repeated header has no key: {values:?}"
        ),
        Some(tag) => {
            assert!(tag.len() <= MAX_LEN, "{tag:?}");
            assert!(tag.starts_with('{') && tag.ends_with('}'), "{tag:?}");
            assert_eq!(tag.matches('{').count(), 1, "{tag:?}");
            assert_eq!(tag.matches('}').count(), 1, "{tag:?}");
            assert!(tag.starts_with("{x-agent-token:"), "{tag:?}");
            assert!(tag.bytes().all(|b| b.is_ascii_graphic()), "{tag:?}");
        }
    }
    Some(written)
}

fuzz_target!(|data: &[u8]| {
    let mut requests = data.splitn(2, |&b| b == 0);
    let a = lines(requests.next().unwrap_or_default());
    let b = lines(requests.next().unwrap_or_default());
    for key in [
        Key::header("X-Agent-Token"),
        Key::header("X-Agent-Token").secret(),
    ] {
        let (Some(ka), Some(kb)) = (key_of(&key, &a), key_of(&key, &b)) else {
            continue;
        };
        if a != b && ka.is_some() {
            assert_ne!(ka, kb, "{a:?} and {b:?} share a key");
        }
    }
});
