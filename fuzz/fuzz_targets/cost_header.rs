//! Arbitrary `X-Event-Count` lines (separated by `\n`) through
//! `Cost::header`: never a panic; a cost only for exactly one line of 1 to
//! 10 ASCII digits worth 1 to `MAX_COST`, equal to what `u64::from_str`
//! reads; otherwise a short message that does not echo the input.
#![no_main]

use axum_redis_ratelimit::{
    Cost,
    cost::MAX_COST,
    fuzzing::{cost, request_parts},
};
use libfuzzer_sys::fuzz_target;

fn expected(values: &[&[u8]]) -> Option<u64> {
    let [value] = values else { return None };
    let text = std::str::from_utf8(value).ok()?;
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_COST).contains(n))
}

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let headers: Vec<(&str, &[u8])> = values.iter().map(|v| ("x-event-count", *v)).collect();
    let Some(parts) = request_parts(&headers) else {
        return;
    };
    let got = cost(&Cost::header("X-Event-Count"), &parts);
    match (expected(&values), got) {
        (Some(want), Ok(got)) => assert_eq!(want, got, "{values:?}"),
        (None, Err(message)) => assert!(message.len() < 80, "{message:?}"),
        (want, got) => panic!("{values:?}: expected {want:?}, got {got:?}"),
    }
});
