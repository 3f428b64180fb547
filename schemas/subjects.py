"""Stream, subject, consumer and bucket names: the bus layout in one place (see docs/architecture.md)."""

JOBS_STREAM = "GIGAAM_JOBS"  # work-queue retention: a job is removed once acked
EVENTS_STREAM = "GIGAAM_EVENTS"  # limits retention: task history, replayable by the registry
DLQ_STREAM = "GIGAAM_DLQ"  # jobs that exhausted their deliveries or failed permanently
OBJECT_BUCKET = "gigaam"  # uploads, decoded audio, transcripts and rendered results
RATE_BUCKET = "gigaam_rate"  # KV for per-key rate limits (API)
KEYS_BUCKET = "gigaam_keys"  # KV: API keys, stored as hashes
IDEMPOTENCY_BUCKET = "gigaam_idempotency"  # KV: Idempotency-Key -> task id (API)
WEBHOOKS_BUCKET = "gigaam_webhooks"  # KV: callback registrations per task (API)
WEBHOOKS_CONSUMER = "gigaam-webhooks"  # durable consumer on the events stream shared by API workers

JOB_PREFIX = "gigaam.job"
STAGES = ("decode", "infer", "format")


def job_subject(stage: str) -> str:
    return f"{JOB_PREFIX}.{stage}"


EVENT_PREFIX = "gigaam.events"


def event_subject(event_type: str, task_id: str) -> str:
    """Events are `gigaam.events.<type>.<task_id>`: subscribe to `gigaam.events.completed.>` for results."""
    return f"{EVENT_PREFIX}.{event_type}.{task_id}"


DLQ_PREFIX = "gigaam.dlq"


def dlq_subject(stage: str) -> str:
    return f"{DLQ_PREFIX}.{stage}"


REGISTRY_PREFIX = "gigaam.registry"  # request-reply: .get .list .delete .ping
WORKER_PING_PREFIX = "gigaam.ping"  # request-reply: gigaam.ping.<stage>, answered by every live worker
METRICS_PREFIX = "gigaam.metrics"  # request, many replies: gigaam.metrics.<service>, Prometheus text
SERVICES = ("api", "ingest", "registry", "decode", "infer", "format")


def registry_subject(op: str) -> str:
    return f"{REGISTRY_PREFIX}.{op}"


def consumer_name(stage: str) -> str:
    return f"gigaam-{stage}"


def object_name(task_id: str, part: str) -> str:
    """Objects of a task share the `<task_id>/` prefix so that deleting a task finds all of them."""
    return f"{task_id}/{part}"


def msg_id(task_id: str, stage: str) -> str:
    """Nats-Msg-Id for de-duplication: a repeated submit or redelivery never makes a second job."""
    return f"{task_id}:{stage}"
