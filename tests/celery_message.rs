//! The edr example's Celery task messages (`examples/edr/celery.rs`, which
//! this test includes as a module): the envelope has the fields, and the
//! fixed values, of what Celery itself sends, its body decodes to the
//! protocol-2 triple with the batch byte for byte, and every message has
//! fresh ids.
//!
//! `tests/celery/send_task.json` is what Celery 5.7 (kombu 5.7, Redis
//! transport) pushed onto the list `celery` for
//! `app.send_task("edr.tasks.process_telemetry", args=[[{"event": 1}]])`.
//! `tests/edr_example.rs` has a real worker run the example's messages.

#[allow(dead_code)]
#[path = "../examples/edr/celery.rs"]
mod celery;

use std::collections::{BTreeSet, HashSet};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use celery::{CeleryTask, DEFAULT_QUEUE, DEFAULT_TASK};
use serde_json::{Value, json};

/// What Celery's own producer sent.
fn celery_sent() -> Value {
    let text = include_str!("celery/send_task.json");
    serde_json::from_str(text).expect("send_task.json is JSON")
}

fn parse(message: &str) -> Value {
    serde_json::from_str(message).expect("the envelope is JSON")
}

/// The envelope's body, base64-decoded.
fn body_bytes(envelope: &Value) -> Vec<u8> {
    let body = envelope["body"].as_str().expect("body is a string");
    BASE64.decode(body).expect("body is base64")
}

fn keys(value: &Value) -> BTreeSet<&str> {
    let object = value.as_object().expect("an object");
    object.keys().map(String::as_str).collect()
}

const BATCH: &str = r#"[{"event":"process_start","pid":4242,"big":12345678901234567890,"path":"C:\\Windows\\é"},{"event":"dns","q":"\u00e9x"}]"#;

#[test]
fn the_envelope_has_celerys_fields_and_fixed_values() {
    let task = CeleryTask::new(DEFAULT_QUEUE, DEFAULT_TASK);
    let ours = parse(&task.message(BATCH.as_bytes(), 2).json);
    let theirs = celery_sent();

    // The same fields at every level a worker reads.
    assert_eq!(keys(&ours), keys(&theirs));
    assert_eq!(keys(&ours["headers"]), keys(&theirs["headers"]));
    assert_eq!(keys(&ours["properties"]), keys(&theirs["properties"]));
    assert_eq!(
        keys(&ours["properties"]["delivery_info"]),
        keys(&theirs["properties"]["delivery_info"])
    );

    // The same values, but for what names this message or its sender.
    let per_message = ["id", "root_id", "argsrepr", "origin"];
    for (field, value) in theirs["headers"].as_object().unwrap() {
        if !per_message.contains(&field.as_str()) {
            assert_eq!(&ours["headers"][field], value, "headers.{field}");
        }
    }
    let per_message = ["correlation_id", "reply_to", "delivery_tag"];
    for (field, value) in theirs["properties"].as_object().unwrap() {
        if !per_message.contains(&field.as_str()) {
            assert_eq!(&ours["properties"][field], value, "properties.{field}");
        }
    }
    for field in ["content-type", "content-encoding"] {
        assert_eq!(ours[field], theirs[field], "{field}");
    }
    assert_eq!(ours["content-type"], "application/json");
    assert_eq!(ours["properties"]["body_encoding"], "base64");
    assert_eq!(ours["properties"]["priority"], 0);
    assert_eq!(ours["headers"]["task"], "edr.tasks.process_telemetry");
    assert_eq!(
        ours["properties"]["delivery_info"],
        json!({"exchange": "", "routing_key": "celery"})
    );

    // One id for the task, its root and the reply's correlation; another
    // for the delivery.
    let id = ours["headers"]["id"].as_str().unwrap();
    assert_eq!(ours["headers"]["root_id"], id);
    assert_eq!(ours["properties"]["correlation_id"], id);
    assert_ne!(ours["properties"]["delivery_tag"], id);
    // No reply queue: the example never waits for a result.
    assert_eq!(ours["properties"]["reply_to"], "");
    // What a worker logs: not the events.
    let argsrepr = ours["headers"]["argsrepr"].as_str().unwrap();
    assert_eq!(
        argsrepr,
        format!("[<batch: 2 events, {} bytes>]", BATCH.len())
    );
    assert!(!argsrepr.contains("process_start"), "{argsrepr}");
    let origin = ours["headers"]["origin"].as_str().unwrap();
    assert!(
        origin.starts_with(&format!("edr{}@", std::process::id())),
        "{origin}"
    );
}

#[test]
fn the_body_is_the_protocol_2_triple_with_the_batch_as_posted() {
    let task = CeleryTask::new("edr-telemetry", "edr.tasks.process_telemetry");
    let message = task.message(BATCH.as_bytes(), 2);
    let envelope = parse(&message.json);
    let body = body_bytes(&envelope);

    // [args, kwargs, embed]: one argument, the batch; no keyword arguments;
    // no callbacks, errbacks, chain or chord.
    let triple: Value = serde_json::from_slice(&body).expect("the body is JSON");
    let batch: Value = serde_json::from_str(BATCH).unwrap();
    assert_eq!(
        triple,
        json!([
            [batch],
            {},
            {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
        ])
    );
    // Celery's own body has the same shape.
    let theirs: Value = serde_json::from_slice(&body_bytes(&celery_sent())).unwrap();
    assert_eq!(
        theirs,
        json!([
            [[{"event": 1}]],
            {},
            {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
        ])
    );

    // The batch's bytes, untouched: a number beyond 64 bits and the
    // escapes stay as the agent wrote them.
    let text = std::str::from_utf8(&body).expect("UTF-8");
    assert!(text.starts_with(&format!("[[{BATCH}],")), "{text}");
    // The queue is the routing key.
    assert_eq!(
        envelope["properties"]["delivery_info"]["routing_key"],
        "edr-telemetry"
    );
}

#[test]
fn every_message_has_a_fresh_task_id_and_delivery_tag() {
    let task = CeleryTask::new(DEFAULT_QUEUE, DEFAULT_TASK);
    let mut ids = HashSet::new();
    for _ in 0..1000 {
        // The same batch every time: a retry gets a message of its own.
        let message = task.message(BATCH.as_bytes(), 2);
        let envelope = parse(&message.json);
        let id = envelope["headers"]["id"].as_str().unwrap().to_owned();
        let tag = envelope["properties"]["delivery_tag"].as_str().unwrap();
        assert_eq!(id, message.id.to_string());
        // Random UUIDs, as Celery's uuid4().
        assert_eq!(message.id.get_version_num(), 4, "{id}");
        let tag: uuid::Uuid = tag.parse().expect("the delivery tag is a UUID");
        assert_eq!(tag.get_version_num(), 4, "{tag}");
        assert!(ids.insert(id), "a task id was reused");
        assert!(ids.insert(tag.to_string()), "a delivery tag was reused");
    }
}
