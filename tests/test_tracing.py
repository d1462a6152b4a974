"""The batch trace (`worker.trace_path`): a real worker writes one line per fetched batch with every step in
order, and the trace reports garbage collections and a blocked event loop."""

from __future__ import annotations

import asyncio
import gc
import time

import orjson
import pytest

from stream_app.tracing import BatchTrace
from tests.test_worker import collect, produce

STEPS = ("append", "fetched", "fetch_returned", "engine", "sent", "model", "answered", "decided", "handed",
         "acknowledged", "acked")


@pytest.mark.integration
def test_a_traced_worker_times_every_step_of_every_fetched_batch(kafka_bootstrap, worker_topics, start_worker,
                                                                  tmp_path):
    path = tmp_path / "trace.jsonl"
    start_worker(worker_topics, env={"FRAUDMON_WORKER__TRACE_PATH": str(path)})
    now_ms = int(time.time() * 1000)
    events = [{"transaction_id": f"traced-{i}", "account_id": f"acc-{i % 17}", "amount": 10.0 + i,
               "timestamp": now_ms} for i in range(300)]
    produce(kafka_bootstrap, worker_topics["transactions"], events, malformed=[b"not json"])
    assert len(collect(kafka_bootstrap, worker_topics["scores"], 300)) == 300
    deadline, batches = time.monotonic() + 10, []
    while time.monotonic() < deadline:  # the trace is flushed every second
        lines = [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []
        batches = [line for line in lines if "n" in line]
        if sum(batch["n"] for batch in batches) >= 301:
            break
        time.sleep(0.5)
    assert sum(batch["n"] for batch in batches) == 301
    for batch in batches:
        assert set(STEPS) <= set(batch), batch
        times = [batch[step] for step in STEPS]
        assert times == sorted(times), batch
        assert batch["acked"] - batch["append"] < 60_000, batch


def test_the_trace_reports_garbage_collections_and_a_blocked_event_loop(tmp_path):
    path = tmp_path / "trace.jsonl"
    trace = BatchTrace(path)

    async def block_the_loop() -> None:
        watcher = asyncio.ensure_future(trace.watch_loop())
        await asyncio.sleep(0.05)
        time.sleep(0.05)  # the loop cannot run its timer meanwhile
        await asyncio.sleep(0.05)
        watcher.cancel()

    try:
        gc.collect(1)
        asyncio.run(block_the_loop())
    finally:
        trace.close()
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert any(line.get("gc") == 1 and line["ms"] >= 0 for line in lines), lines
    assert any(line.get("loop_lag", 0) >= 30 for line in lines), lines
