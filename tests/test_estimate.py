"""Upload estimates: the cost model fitted from completed tasks, and how queue depth adds to it.

The arithmetic is tested as pure functions; two tests run the Estimator against a real broker so the
history and queue-depth reads are covered too, including the fallback when neither is there.
"""

from __future__ import annotations

import pytest

from pipeline import bus
from pipeline.api.estimate import PRIOR_OVERHEAD, PRIOR_RTF, Estimator, Fit, estimate_seconds, fit
from pipeline.natsserver import EmbeddedNats
from schemas.messages import DecodeJob, RegistryReply, RegistryRequest, TaskRecord, decode, encode
from schemas.subjects import registry_subject

# -- fit ------------------------------------------------------------------------------------


def test_no_history_gives_the_documented_priors() -> None:
    assert fit([]) == Fit(PRIOR_OVERHEAD, PRIOR_RTF, PRIOR_OVERHEAD + PRIOR_RTF * 60)


def test_linear_history_recovers_overhead_and_speed() -> None:
    samples = [(d, 1.5 + 0.1 * d) for d in (10.0, 20.0, 60.0, 120.0)]
    model = fit(samples)
    assert model.overhead == pytest.approx(1.5)
    assert model.rtf == pytest.approx(0.1)
    assert model.mean_task == pytest.approx(sum(p for _, p in samples) / len(samples))


def test_too_few_samples_put_everything_into_speed() -> None:
    """Two points could fit any line: no overhead is claimed, the pooled ratio is the speed."""
    model = fit([(10.0, 3.0), (30.0, 5.0)])
    assert model == Fit(0.0, pytest.approx(8.0 / 40.0), pytest.approx(4.0))


def test_identical_durations_cannot_separate_overhead() -> None:
    model = fit([(30.0, 3.0), (30.0, 6.0), (30.0, 9.0)])
    assert model.overhead == 0.0
    assert model.rtf == pytest.approx(18.0 / 90.0)


def test_outlier_that_makes_the_slope_negative_falls_back_to_the_ratio() -> None:
    """One short file that stalled would make longer media look cheaper; the estimate must not go
    negative for long uploads."""
    samples = [(5.0, 60.0), (20.0, 2.0), (30.0, 3.0), (40.0, 4.0)]
    model = fit(samples)
    assert model.overhead == 0.0
    assert model.rtf == pytest.approx(69.0 / 95.0)
    assert estimate_seconds(model, 1, 1, 3600.0) > 0


def test_negative_intercept_falls_back_to_the_ratio() -> None:
    model = fit([(10.0, 1.0), (20.0, 3.0), (30.0, 5.0)])  # p = 0.2 d - 1
    assert model.overhead == 0.0
    assert model.rtf == pytest.approx(9.0 / 60.0)


def test_zero_durations_keep_the_prior_speed() -> None:
    model = fit([(0.0, 1.0), (0.0, 2.0)])
    assert model.rtf == PRIOR_RTF
    assert model.mean_task == pytest.approx(1.5)


# -- estimate_seconds -----------------------------------------------------------------------


def test_empty_queue_is_just_the_task_itself() -> None:
    model = Fit(2.0, 0.1, 50.0)
    assert estimate_seconds(model, 1, 1, 60.0) == pytest.approx(2.0 + 6.0)
    assert estimate_seconds(model, 0, 1, 60.0) == pytest.approx(8.0)  # a depth read before the publish
    assert estimate_seconds(model, 1, 1, None) == pytest.approx(2.0)  # duration unknown: overhead only


def test_no_history_estimate_uses_the_priors() -> None:
    assert estimate_seconds(fit([]), 1, 1, 60.0) == pytest.approx(PRIOR_OVERHEAD + PRIOR_RTF * 60.0)


def test_faster_measured_throughput_gives_a_smaller_estimate() -> None:
    fast = fit([(d, 0.05 * d) for d in (10.0, 30.0, 60.0)])
    slow = fit([(d, 0.5 * d) for d in (10.0, 30.0, 60.0)])
    for queued in (1, 4):
        assert estimate_seconds(fast, queued, 1, 60.0) < estimate_seconds(slow, queued, 1, 60.0)


def test_queued_work_adds_mean_task_time_shared_by_the_parallel_slots() -> None:
    model = Fit(1.0, 0.1, 20.0)
    alone = estimate_seconds(model, 1, 1, 60.0)
    assert estimate_seconds(model, 5, 1, 60.0) == pytest.approx(alone + 4 * 20.0)
    assert estimate_seconds(model, 5, 2, 60.0) == pytest.approx(alone + 4 * 20.0 / 2)
    assert estimate_seconds(model, 5, 0, 60.0) == estimate_seconds(model, 5, 1, 60.0)
    depths = [estimate_seconds(model, q, 1, 60.0) for q in range(1, 6)]
    assert depths == sorted(depths) and len(set(depths)) == len(depths)


# -- Estimator on a real broker -------------------------------------------------------------


def record(i: int, duration: float | None, processing: float | None) -> TaskRecord:
    return TaskRecord(
        task_id=f"t{i}",
        status="completed",
        stage="done",
        progress=100,
        created_at=0.0,
        media_duration=duration,
        processing_time=processing,
    )


async def test_estimator_without_registry_or_stream_uses_the_priors(nats_server: EmbeddedNats) -> None:
    async with await bus.connect(nats_server.url, "test", first_connect_timeout=5) as b:
        seconds = await Estimator(b, parallel=1).estimate(60.0)
    assert seconds == pytest.approx(PRIOR_OVERHEAD + PRIOR_RTF * 60.0)


async def test_estimator_combines_history_and_queue_depth(nats_server: EmbeddedNats) -> None:
    history = [record(i, d, 2.0 + 0.1 * d) for i, d in enumerate((10.0, 30.0, 90.0))]
    # rows the fit must skip: unknown or zero duration, not yet timed
    history += [record(7, None, 50.0), record(8, 0.0, 50.0), record(9, 20.0, None)]
    asked: list[RegistryRequest] = []
    async with await bus.connect(nats_server.url, "test", first_connect_timeout=5) as b:

        async def registry(msg) -> None:  # noqa: ANN001
            asked.append(decode(RegistryRequest, msg.data))
            await msg.respond(encode(RegistryReply(ok=True, tasks=tuple(history), total=len(history))))

        await b.nc.subscribe(registry_subject("list"), cb=registry)
        await bus.ensure_layout(b.js, retention_s=3600)
        for i in range(3):  # nobody consumes decode here: the new upload plus two ahead of it
            job = DecodeJob(task_id=f"q{i}", media="m", filename="a", file_size=1)
            await bus.publish_job(b.js, "decode", job, f"q{i}")
        seconds = await Estimator(b, parallel=2).estimate(60.0)
    assert asked and asked[0].op == "list" and asked[0].status == "completed"
    mean_task = sum(2.0 + 0.1 * d for d in (10.0, 30.0, 90.0)) / 3
    assert seconds == pytest.approx(2 * mean_task / 2 + 2.0 + 0.1 * 60.0)
