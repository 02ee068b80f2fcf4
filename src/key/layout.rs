//! The Redis key layout, written in one place:
//!
//! ```text
//! rl:telemetry:{x-agent-token:AGENT-1}:60:gcra
//! └─ head ────┘└─ client's hash tag ─┘└ counter ┘
//! ```
//!
//! The head is the policy's prefix and name; the hash tag holds the key's
//! label and the client's value (encoded, see [`encode`](super::encode)), so
//! that every counter of one client lands in one Redis Cluster slot; each
//! limit then names its counter by its window in seconds and the algorithm
//! (and `:app` where the app's clock keeps another shape), so that switching
//! a policy's algorithm or clock never reads state of another shape. The
//! sliding window on Redis's clock keeps a second integer beside its
//! counter, the previous window's count, named `<counter>:prev`.

use std::fmt::Write as _;

use http::request::Parts;

use super::{Key, KeyError};
use crate::{
    Error,
    algorithm::{Limit, Script},
};

/// `<prefix><policy>:{`: every client key of a policy starts so.
pub(crate) fn head(prefix: &str, policy: &str) -> String {
    format!("{prefix}{policy}:{{")
}

/// Writes the client key of a request to `out` (cleared first): `head`, the
/// key's `label:value` for this request, and the closing brace.
pub(crate) fn client_key(
    head: &str,
    key: &Key,
    parts: &Parts,
    out: &mut String,
) -> Result<(), KeyError> {
    tagged(head, out, |out| key.write(parts, out))
}

/// Writes the client key of a client whose value for `key` (one key of a
/// chain, not its fallbacks) is `value` to `out` (cleared first): what
/// [`client_key`] writes for a request carrying that value.
pub(crate) fn client_key_of_value(
    head: &str,
    key: &Key,
    value: &[u8],
    out: &mut String,
) -> Result<(), Error> {
    tagged(head, out, |out| key.write_value(value, out))
}

/// `head`, the client's part as `part` writes it, and the closing brace.
fn tagged<E>(
    head: &str,
    out: &mut String,
    part: impl FnOnce(&mut String) -> Result<(), E>,
) -> Result<(), E> {
    out.clear();
    out.push_str(head);
    part(out)?;
    out.push('}');
    Ok(())
}

/// The client key a counter key belongs to, if it is under `head`: up to
/// the closing brace of its hash tag (no label or encoded value holds a
/// brace), e.g. `rl:telemetry:{x-agent-token:AGENT-1}` of
/// `rl:telemetry:{x-agent-token:AGENT-1}:60:gcra`.
pub(crate) fn client_of_counter<'a>(head: &str, counter: &'a str) -> Option<&'a str> {
    let tag = counter.strip_prefix(head)?;
    let end = head.len() + tag.find('}')? + 1;
    Some(&counter[..end])
}

/// Writes the counter of `limit` under `client_key` to `out` (cleared
/// first): `:60:fixed`, `:60:sliding`, `:60:gcra`, and on the app's clock
/// `:60:fixed:app`, `:60:sliding:app` and `:60:gcra:app`.
pub(crate) fn counter_key(client_key: &str, limit: &Limit, script: Script, out: &mut String) {
    // On the app's clock every algorithm keeps counters of another shape
    // (times of that clock): `:app` keeps them apart.
    let suffix = match script {
        Script::FixedWindow => ":fixed",
        Script::FixedWindowAppClock => ":fixed:app",
        Script::SlidingWindow => ":sliding",
        Script::SlidingWindowAppClock => ":sliding:app",
        Script::Gcra => ":gcra",
        Script::GcraAppClock => ":gcra:app",
    };
    out.clear();
    out.push_str(client_key);
    let _ = write!(out, ":{}{suffix}", limit.rate().window().as_secs());
}

/// Writes the name of the previous window's count that the sliding window
/// on Redis's clock keeps beside `counter` to `out` (cleared first).
pub(crate) fn previous_count_key(counter: &str, out: &mut String) {
    out.clear();
    out.push_str(counter);
    out.push_str(PREVIOUS_COUNT);
}

/// The suffix of [`previous_count_key`].
const PREVIOUS_COUNT: &str = ":prev";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rate;

    #[test]
    fn keys_are_laid_out_head_tag_counter() {
        let mut request = http::Request::new(());
        request
            .headers_mut()
            .insert("x-agent-token", "AGENT-1".parse().unwrap());
        let parts = request.into_parts().0;
        let mut client = String::from("stale");
        let head = head("rl:", "telemetry");
        client_key(&head, &Key::header("X-Agent-Token"), &parts, &mut client).unwrap();
        assert_eq!(client, "rl:telemetry:{x-agent-token:AGENT-1}");
        let limit = Limit::new(Rate::per_minute(5));
        let mut counter = String::new();
        for (script, expected) in [
            (Script::FixedWindow, ":60:fixed"),
            (Script::FixedWindowAppClock, ":60:fixed:app"),
            (Script::SlidingWindow, ":60:sliding"),
            (Script::SlidingWindowAppClock, ":60:sliding:app"),
            (Script::Gcra, ":60:gcra"),
            (Script::GcraAppClock, ":60:gcra:app"),
        ] {
            counter_key(&client, &limit, script, &mut counter);
            assert_eq!(counter, format!("{client}{expected}"));
        }
        let mut previous = String::from("stale");
        previous_count_key(&counter, &mut previous);
        assert_eq!(previous, format!("{counter}:prev"));
        let missing = client_key(&head, &Key::user(), &parts, &mut client);
        assert_eq!(missing, Err(KeyError::Missing("user".into())));
    }
}
