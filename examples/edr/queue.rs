//! The hand-off of accepted telemetry to Redis, idempotent so that agents
//! can retry. An agent names each batch with `X-Batch-Id` (1 to 128 visible
//! ASCII characters, such as a UUID; ids are per `X-Agent-Token`); without
//! one, a batch is known by its bytes. One Lua script pushes a batch and
//! marks it for `QUEUE_DEDUP_SECONDS`, or, if it is marked already, does
//! neither. The guarantee: each batch is queued at most once per window
//! (counted from its first push), and
//! - `202 {"status":"queued"}` means it is queued, by this attempt or an
//!   earlier one;
//! - `503 {"error":"queue unavailable","retry_after":1}`, with
//!   `Retry-After: 1`, after waiting at most 250 ms for Redis, means it may or
//!   may not be queued (a push that timed out can still run later): retry
//!   with the same `X-Batch-Id` and the same bytes within the window, and it
//!   is queued exactly once;
//! - `409 {"error":"batch id reused",…}` means the id was given to other bytes
//!   within the window; nothing is queued.
//!
//! Two byte-identical batches without an id from one agent within the
//! window are one batch: an agent that may send the same bytes twice (a
//! heartbeat) gives each batch an id, or a timestamp in its events. The
//! marks are ordinary keys with a TTL in the queue's database: a Redis that
//! forgets them (restarted without persistence, or evicting under a
//! `volatile-*` or `allkeys-*` `maxmemory-policy`) forgets the window too.
//!
//! What is pushed (`QUEUE_FORMAT`):
//! - `celery` (the default): a Celery task message (`celery.rs`) that runs
//!   `CELERY_TASK` on the batch, `LPUSH`ed onto the list named after
//!   `CELERY_QUEUE` (`celery`), where Celery workers consume it. Each
//!   request builds its message, with a fresh task id, before the script
//!   runs; a retry's message is dropped by the script with the retry, since
//!   the mark holds the batch's digest, not the message: a batch answered
//!   `503` and retried is run once, under the task id of the push that ran.
//! - `raw`: the body as posted, `RPUSH`ed onto `edr:telemetry`, for
//!   consumers that are not Celery (they pop from the left).
//!
//! The queue follows the counters' topology (or `QUEUE_URL`'s one server):
//! its connection is the library's `RedisConnection`, to one server, a
//! Redis Cluster, or the master the sentinels name; the list has its name
//! in each. A batch's mark is named after the list, `<list>:batch:<hash>`
//! (`celery:batch:<hash>`, `edr:telemetry:batch:<hash>`). A script's keys
//! must share a cluster slot, so in a cluster the marks of a list without a
//! hash tag are `{<list>}:batch:<hash>`: their hash tag is the list's name,
//! and a key without one hashes by its whole name, so the marks and the
//! list are in one slot (and so on one node, as one list always is). A list
//! with a hash tag (`{edr}telemetry`) hashes by it, and so do its marks,
//! `<list>:batch:<hash>`.

use std::{fmt::Write as _, sync::LazyLock, time::Duration};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum_redis_ratelimit::{Error, store::RedisConnection};
use sha2::{Digest, Sha256};

use crate::{AGENT_TOKEN_HEADER, celery::CeleryTask, config::Queue};

/// The list of `QUEUE_FORMAT=raw`, whatever the topology.
pub const RAW_QUEUE_KEY: &str = "edr:telemetry";
/// An agent's name for a batch, so that its retries are known as retries.
pub const BATCH_ID_HEADER: HeaderName = HeaderName::from_static("x-batch-id");
/// Longest a batch waits for the queue before its agent is told to retry.
const QUEUE_TIMEOUT: Duration = Duration::from_millis(250);
/// How many times startup asks the queue for a `PING`, each within
/// [`STARTUP_PING`], before it gives up.
const STARTUP_PINGS: usize = 3;
const STARTUP_PING: Duration = Duration::from_secs(2);

/// The agent's name for its batch, if it gives one: one line of 1 to 128
/// visible ASCII characters (a UUID, a sequence number…).
pub fn batch_id(headers: &HeaderMap) -> Result<Option<HeaderValue>, String> {
    let mut values = headers.get_all(BATCH_ID_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(id), None)
            if (1..=128).contains(&id.len()) && id.as_bytes().iter().all(u8::is_ascii_graphic) =>
        {
            Ok(Some(id.clone()))
        }
        _ => Err(format!(
            "{BATCH_ID_HEADER} must be one line of 1 to 128 visible ASCII characters"
        )),
    }
}

/// A batch as the dedup window knows it: its `X-Batch-Id`, or without one
/// its bytes, within its agent's namespace (the `X-Agent-Token` lines), so
/// that no agent can pass its batch off as another's. Only hashes reach
/// Redis.
pub struct BatchMark {
    /// A hash of the token lines and the id or bytes: the mark is
    /// `<list>:batch:<hash>`, such as `celery:batch:<hash>` (see
    /// [`mark_prefix`]).
    pub hash: String,
    /// A hash of the bytes: tells a retry from another batch under the
    /// same id.
    pub digest: String,
}

impl BatchMark {
    pub fn new(headers: &HeaderMap, id: Option<&[u8]>, body: &[u8]) -> Self {
        let body_hash = Sha256::digest(body);
        // Every part is length-prefixed, so no two inputs hash the same bytes.
        let mut hash = Sha256::new();
        let tokens = headers.get_all(AGENT_TOKEN_HEADER);
        hash.update((tokens.iter().count() as u64).to_le_bytes());
        for part in tokens.iter().map(HeaderValue::as_bytes) {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        match id {
            Some(id) => {
                hash.update(b"id");
                hash.update((id.len() as u64).to_le_bytes());
                hash.update(id);
            }
            None => {
                hash.update(b"body");
                hash.update(body_hash);
            }
        }
        // 128 bits, as the limiter's keys.
        Self {
            hash: hex(&hash.finalize()[..16]),
            digest: hex(&body_hash[..16]),
        }
    }
}

/// What the workers are handed, and where.
#[derive(Clone, Debug)]
pub enum Format {
    /// The body as posted, `RPUSH`ed onto [`RAW_QUEUE_KEY`].
    Raw,
    /// A Celery task message running the task on the batch, `LPUSH`ed onto
    /// the queue's list.
    Celery(CeleryTask),
}

impl Format {
    /// The list the batches go to.
    pub fn list(&self) -> &str {
        match self {
            Self::Raw => RAW_QUEUE_KEY,
            Self::Celery(celery) => &celery.queue,
        }
    }

    /// The push: consumers of the raw list pop from the left, Celery
    /// workers `BRPOP` (kombu pushes with `LPUSH`).
    fn push(&self) -> &'static str {
        match self {
            Self::Raw => "RPUSH",
            Self::Celery(_) => "LPUSH",
        }
    }
}

/// The part of `key` a Redis Cluster hashes, if not the whole key: the
/// text between its first `{` and the first `}` after it, if not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    Some(&key[open + 1..open + 1 + close]).filter(|tag| !tag.is_empty())
}

/// The prefix of the marks of `list`'s batches, which hash to the list's
/// slot in a cluster: `<list>:batch:`, or in a cluster, for a list without
/// a hash tag, `{<list>}:batch:`. `Err` for a list no mark can share a
/// slot with in a cluster: one with a `}` but no hash tag.
pub fn mark_prefix(list: &str, cluster: bool) -> Result<String, String> {
    if !cluster || hash_tag(list).is_some() {
        return Ok(format!("{list}:batch:"));
    }
    if list.contains('}') {
        return Err(format!(
            "{list:?} has a `}}` but no hash tag: in a Redis Cluster, no batch mark could share \
             its slot (a script's keys must); drop the braces, or give it a whole tag such as \
             {{edr}}"
        ));
    }
    Ok(format!("{{{list}}}:batch:"))
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// What became of a batch handed to the queue.
pub enum Enqueued {
    /// Pushed now.
    Queued,
    /// Pushed by an earlier attempt within the window, so not again.
    AlreadyQueued,
    /// Another batch was queued under its id within the window.
    IdReused,
}

/// Pushes a batch unless it is marked, and marks it for the window, in one
/// script: the mark and the push happen together or not at all, so each
/// batch is pushed at most once per window however its attempts fare. (The
/// push comes first: a script is not rolled back, and a push that fails,
/// say on a key that holds no list, must leave no mark.)
/// The mark holds the batch's digest, not the message: a retry, whose
/// Celery message has another task id, is the same batch.
/// KEYS: the mark, the list. ARGV: the message, the batch's digest, the
/// window in ms, the push (`LPUSH` or `RPUSH`). Returns 1 (queued), 0
/// (queued already) or -1 (id reused).
pub static ENQUEUE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local seen = redis.call('GET', KEYS[1])
if seen then
  if seen == ARGV[2] then return 0 end
  return -1
end
if ARGV[4] == 'LPUSH' then
  redis.call('LPUSH', KEYS[2], ARGV[1])
else
  redis.call('RPUSH', KEYS[2], ARGV[1])
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// The hand-off to the workers: one connection shared by all requests
/// (multiplexed, to one server, a cluster's nodes or the Sentinel master),
/// reconnecting by itself.
#[derive(Clone)]
pub struct EventQueue {
    pub connection: RedisConnection,
    /// How long a batch stays marked once queued.
    pub window: Duration,
    /// What is pushed, and onto which list.
    pub format: Format,
    /// See [`mark_prefix`].
    mark_prefix: String,
}

impl EventQueue {
    /// A connection to `queue`, checked with a `PING`: a queue that cannot
    /// be reached stops startup.
    ///
    /// `mark_prefix` is [`mark_prefix`]'s for the format's list.
    pub async fn connect(
        queue: &Queue,
        window: Duration,
        format: Format,
        mark_prefix: String,
    ) -> Result<Self, Error> {
        // Bounded, so that a dead queue turns into a quick 503 rather than
        // agents waiting on a hung request.
        let config = queue.config.clone().connect_timeout(QUEUE_TIMEOUT);
        let connection = RedisConnection::open(config)?;
        // It connects on its first command.
        let (mut ping, command) = (Ok(()), redis::cmd("PING"));
        for _ in 0..STARTUP_PINGS {
            let mut connection = connection.clone();
            let answer = command.query_async::<()>(&mut connection);
            ping = (tokio::time::timeout(STARTUP_PING, answer).await)
                .unwrap_or_else(|_| Err(timed_out("no answer to PING").into()));
            if ping.is_ok() {
                break;
            }
        }
        ping?;
        match &format {
            Format::Raw => tracing::info!(
                queue = %queue.shown,
                list = format.list(),
                marks = %format_args!("{mark_prefix}<hash>"),
                dedup_seconds = window.as_secs(),
                "telemetry queued in Redis as posted (QUEUE_FORMAT=raw)"
            ),
            Format::Celery(celery) => tracing::info!(
                queue = %queue.shown,
                celery_queue = %celery.queue,
                celery_task = %celery.task,
                marks = %format_args!("{mark_prefix}<hash>"),
                dedup_seconds = window.as_secs(),
                "telemetry queued in Redis as Celery tasks"
            ),
        }
        Ok(Self {
            connection,
            window,
            format,
            mark_prefix,
        })
    }

    /// Queues `batch`, a checked JSON array of `events` event objects, at
    /// most once per window, within `QUEUE_TIMEOUT`, in the queue's format.
    pub async fn enqueue(
        &self,
        mark: &BatchMark,
        batch: &[u8],
        events: u64,
    ) -> redis::RedisResult<Enqueued> {
        let mut connection = self.connection.clone();
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        // Built once per request: a retry is a new request, with a message
        // of its own, which the script drops if the batch is marked.
        let message = match &self.format {
            Format::Raw => batch.to_vec(),
            Format::Celery(celery) => {
                let message = celery.message(batch, events);
                tracing::debug!(task_id = %message.id, "Celery task message built");
                message.json.into_bytes()
            }
        };
        let mut call = ENQUEUE.key(format!("{}{}", self.mark_prefix, mark.hash));
        call.key(self.format.list())
            .arg(message)
            .arg(&mark.digest)
            .arg(window_ms)
            .arg(self.format.push());
        let outcome =
            tokio::time::timeout(QUEUE_TIMEOUT, call.invoke_async::<i64>(&mut connection))
                .await
                .map_err(|_| timed_out("no answer from the queue"))??;
        Ok(match outcome {
            1 => Enqueued::Queued,
            0 => Enqueued::AlreadyQueued,
            _ => Enqueued::IdReused,
        })
    }
}

fn timed_out(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}
