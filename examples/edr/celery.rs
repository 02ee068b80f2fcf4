//! Celery task messages, as a Python producer (`task.delay(batch)`) would
//! put them on Redis, so that existing Celery workers run each accepted
//! batch unchanged: task message protocol version 2, the JSON serializer,
//! and the envelope of kombu's Redis transport.
//!
//! What a worker finds on the list named after its queue (`celery` by
//! default), checked against celery 5.7 and kombu 5.7 and against what
//! `app.send_task()` itself pushes:
//!
//! ```text
//! {"body": "<base64 of the protocol-2 body>",
//!  "content-encoding": "utf-8", "content-type": "application/json",
//!  "headers": {"lang": "py", "task": <CELERY_TASK>, "id": <task id>,
//!              "root_id": <task id>, "parent_id": null, "group": null,
//!              "group_index": null, "shadow": null, "eta": null,
//!              "expires": null, "retries": 0, "timelimit": [null, null],
//!              "argsrepr": "[<batch: N events, B bytes>]", "kwargsrepr": "{}",
//!              "origin": "edr<pid>@<host>", "ignore_result": null,
//!              "replaced_task_nesting": 0, "stamped_headers": null,
//!              "stamps": {}},
//!  "properties": {"correlation_id": <task id>, "reply_to": "",
//!                 "delivery_mode": 2, "priority": 0,
//!                 "delivery_info": {"exchange": "", "routing_key": <CELERY_QUEUE>},
//!                 "body_encoding": "base64", "delivery_tag": <a UUID>}}
//! ```
//!
//! - The headers are `celery/app/amqp.py`'s `AMQP.as_task_v2`, with its
//!   defaults: `root_id` is the task id, as for a task sent from outside a
//!   task; `ignore_result` null leaves it to the task's own setting, as
//!   `send_task()` does. The worker reads `id` and `task`
//!   (`celery/worker/request.py`, `Request.__init__`); `task` names the
//!   task it runs (`celery/worker/consumer/consumer.py`, `on_task_received`:
//!   a message without it is taken for protocol 1).
//! - The body is the protocol-2 triple `[args, kwargs, embed]`:
//!   `[[batch], {}, {"callbacks": null, "errbacks": null, "chain": null,
//!   "chord": null}]`. The batch is the task's one argument as posted, a
//!   JSON array of event objects, so the task receives a `list` of `dict`s.
//!   It is spliced in byte for byte, never re-encoded: the handler has
//!   checked that it is UTF-8 JSON, and a number or a string reaches the
//!   worker exactly as the agent wrote it.
//! - The envelope is kombu's `Channel.prepare_message` and
//!   `_inplace_augment_message` (`kombu/transport/virtual/base.py`): the
//!   body in base64 (`body_encoding`, the Redis transport's default), a
//!   fresh UUID as `delivery_tag` (what ack emulation keys the `unacked`
//!   hash by), and `delivery_info` naming the queue by routing key on the
//!   default exchange, as Celery sends a task to a direct queue
//!   (`celery/app/amqp.py`, `send_task_message`: exchange `''`, routing key
//!   the queue's name); kombu puts a message it must restore back there.
//!   `delivery_mode` 2 is persistent, Celery's default.
//! - Priority 0 is the queue's own list: kombu's `Channel._put`
//!   (`kombu/transport/redis.py`) `LPUSH`es a message onto
//!   `_q_for_pri(queue, priority)`, which is the queue's name for priority
//!   0 and `<queue>\x06\x16<3|6|9>` for the others; a worker `BRPOP`s all
//!   of them, so the list is first in, first out. `queue.rs` pushes with
//!   `LPUSH` too.
//!
//! Not supported: kombu's `global_keyprefix` transport option (the list
//! would be `<prefix><queue>`), and message signing (`auth` serializer).
//!
//! Each message has a fresh task id (UUID v4): a task id names one run of a
//! task, and results, revocations and the events a monitor sees are keyed
//! by it. A retried batch is recognised by its mark, not by its message
//! (see `queue.rs`), so the retry's new id never reaches a worker.
//!
//! No Celery client crate: the `celery` crate (rusty-celery) publishes
//! through brokers of its own, so its push could not be the one the
//! dedup script makes atomically with the batch's mark, nor follow a
//! Redis Cluster or Sentinel through the library's connection; and it is
//! large for what a producer needs, one JSON document.

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use serde_json::json;
use uuid::Uuid;

/// The default `CELERY_QUEUE`: Celery's own default queue.
pub const DEFAULT_QUEUE: &str = "celery";
/// The default `CELERY_TASK`.
pub const DEFAULT_TASK: &str = "edr.tasks.process_telemetry";

/// Where batches go and which task runs them.
#[derive(Clone, Debug)]
pub struct CeleryTask {
    /// The queue the workers consume, and so the Redis list.
    pub queue: String,
    /// The task's registered name.
    pub task: String,
    /// Who sent the message: `edr<pid>@<host>`, as Celery's `gen<pid>@<host>`.
    pub origin: String,
}

/// One task message, ready to push.
pub struct TaskMessage {
    /// The task id: `headers.id`, `root_id` and `correlation_id`.
    pub id: Uuid,
    /// The envelope, JSON.
    pub json: String,
}

impl CeleryTask {
    pub fn new(queue: impl Into<String>, task: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            task: task.into(),
            origin: format!("edr{}@{}", std::process::id(), hostname()),
        }
    }

    /// A message that runs the task on `batch`, holding `events` events,
    /// with a fresh task id. `batch` must be a JSON value as UTF-8 text
    /// (the handler has checked it): it is the task's argument as is.
    pub fn message(&self, batch: &[u8], events: u64) -> TaskMessage {
        let id = Uuid::new_v4();
        let task_id = id.to_string();
        // [args, kwargs, embed], args being [batch].
        const EMBED: &[u8] =
            br#"],{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]"#;
        let mut body = Vec::with_capacity(batch.len() + EMBED.len() + 2);
        body.extend_from_slice(b"[[");
        body.extend_from_slice(batch);
        body.extend_from_slice(EMBED);
        let envelope = json!({
            "body": BASE64.encode(&body),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": self.task,
                "id": task_id,
                "shadow": null,
                "eta": null,
                "expires": null,
                "group": null,
                "group_index": null,
                "retries": 0,
                "timelimit": [null, null],
                "root_id": task_id,
                "parent_id": null,
                // What the worker logs for the arguments: not the events,
                // which may be large or sensitive.
                "argsrepr": format!("[<batch: {events} events, {} bytes>]", batch.len()),
                "kwargsrepr": "{}",
                "origin": self.origin,
                "ignore_result": null,
                "replaced_task_nesting": 0,
                "stamped_headers": null,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": { "exchange": "", "routing_key": self.queue },
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": Uuid::new_v4().to_string(),
            },
        });
        TaskMessage {
            id,
            json: envelope.to_string(),
        }
    }
}

/// This machine's name, for `origin`; `localhost` where it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
