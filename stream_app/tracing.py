"""The worker's batch trace (`worker.trace_path`, off by default): where a fetched batch's time goes.

One JSON line per fetched batch of `transactions`, with the wall-clock time (ms since the epoch) of each step:
`append` (the broker's append time of the batch's oldest record: the end-to-end clock on a topic with
`message.timestamp.type=LogAppendTime`, as the bench's), `fetched` (the consumer thread handed the fetch over),
`fetch_returned` (the worker's loop has it), `engine` (deciding begins), `sent` (its rule-state script is sent),
`model` (features, model and explanations done: the worker waits for the script's answer), `answered`, `decided`,
`handed` (the producer has every record batch), `acknowledged` (by the brokers) and `acked` (the offsets, for the
next commit). Steps of a fetch larger than `worker.max_batch` are those of its first micro-batch.

Lines of other kinds: `{"gc": generation, "at": ms, "ms": pause}` for each garbage collection, and
`{"loop_lag": ms, "at": ms}` when a 10 ms timer of the worker's event loop fires late by more than 2 ms (the loop
was busy or the process was not scheduled). `docs/performance.md` reads such a trace."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path
from typing import Any

import orjson

LOOP_TICK_S = 0.01
LOOP_LAG_REPORTED_S = 0.002


class BatchTrace:
    """Writes the trace; `steps()` starts one batch's marks, `mark` adds a step, `write` ends it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab", buffering=1 << 16)
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    @staticmethod
    def steps(**marks: float) -> dict[str, float]:
        return dict(marks)

    @staticmethod
    def mark(steps: dict[str, float] | None, step: str) -> None:
        """The time of `step`, the first time it is marked in `steps` (the first micro-batch's)."""
        if steps is not None and step not in steps:
            steps[step] = time.time() * 1000.0

    def write(self, entry: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            pause_ms = (time.perf_counter() - self._gc_started) * 1000.0
            self.write({"gc": info["generation"], "at": time.time() * 1000.0, "ms": round(pause_ms, 3)})

    async def watch_loop(self) -> None:
        """Report the event loop's late wake-ups, until cancelled."""
        while True:
            due = time.perf_counter() + LOOP_TICK_S
            await asyncio.sleep(LOOP_TICK_S)
            late = time.perf_counter() - due
            if late > LOOP_LAG_REPORTED_S:
                self.write({"loop_lag": round(late * 1000.0, 3), "at": time.time() * 1000.0})

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        gc.callbacks.remove(self._on_gc)
        self._file.close()


class TracedStore:
    """A state store whose script sends and answers are marked in the current batch's steps."""

    def __init__(self, store: Any, trace: BatchTrace) -> None:
        self._store, self._trace = store, trace
        self.steps: dict[str, float] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def observe_later(self, *args: Any, **kwargs: Any) -> Any:
        pending = self._store.observe_later(*args, **kwargs)
        self._trace.mark(self.steps, "sent")
        return _TracedPending(pending, self)


class _TracedPending:
    def __init__(self, pending: Any, store: TracedStore) -> None:
        self._pending, self._store = pending, store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pending, name)

    def result(self) -> Any:
        steps, mark = self._store.steps, self._store._trace.mark
        mark(steps, "model")
        try:
            return self._pending.result()
        finally:
            mark(steps, "answered")
