"""The EDR workers' side, for tests/edr_example.rs: a Celery app on the Redis
transport with the task the edr example queues, as a team's existing workers
would define it. The task records each batch it runs, with its task id, on a
Redis list the test reads (in another database than the broker's), so the test
can tell which batches ran and how often.

    CELERY_BROKER_URL  the broker, as the example's queue: redis://host:port/0,
                       or sentinel://host:port/0 with CELERY_MASTER_NAME
    CELERY_MASTER_NAME with a sentinel:// broker, the master's name
    EDR_RECORD_URL     where runs are recorded: redis://host:port/2
    EDR_RECORD_KEY     the list they are recorded on (default edr:runs)

Run: celery -A edr.tasks worker --pool solo -Q celery (from tests/celery).
"""

import json
import os

import redis
from celery import Celery

app = Celery("edr", broker=os.environ["CELERY_BROKER_URL"])
# As the seed's workers: JSON only, and no result backend.
app.conf.update(accept_content=["json"], task_serializer="json")
if os.environ.get("CELERY_MASTER_NAME"):
    app.conf.broker_transport_options = {"master_name": os.environ["CELERY_MASTER_NAME"]}

_record = redis.Redis.from_url(os.environ["EDR_RECORD_URL"])
_key = os.environ.get("EDR_RECORD_KEY", "edr:runs")


@app.task(name="edr.tasks.process_telemetry", bind=True)
def process_telemetry(self, batch):
    """One accepted batch: a list of event objects (dicts), as the agent posted it."""
    info = self.request.delivery_info or {}
    _record.rpush(
        _key,
        json.dumps(
            {
                "task_id": self.request.id,
                "routing_key": info.get("routing_key"),
                "redelivered": bool(info.get("redelivered")),
                "batch": batch,
            }
        ),
    )
