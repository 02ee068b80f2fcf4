//! Any text through `Rate::from_str`: never a panic; every rate it accepts
//! prints as a text that parses back to the same rate, and that text is a
//! fixed point.
#![no_main]

use axum_redis_ratelimit::Rate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<Rate>() {
        Ok(rate) => {
            assert!(rate.limit() >= 1, "{text:?}");
            let secs = rate.window().as_secs();
            assert!((1..=366 * 86_400).contains(&secs), "{text:?}");
            let printed = rate.to_string();
            let again: Rate = printed
                .parse()
                .unwrap_or_else(|err| panic!("{text:?} printed as {printed:?}: {err}"));
            assert_eq!(again, rate, "{text:?} printed as {printed:?}");
            assert_eq!(again.to_string(), printed);
        }
        Err(err) => {
            // The error quotes the input, so an operator can find it.
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
    }
});
