"""`fraudmon bench`: one worker's sustained throughput and end-to-end latency at fixed rates, next to a
baseline measured in the same run on the same broker: a bare aiokafka consume-and-produce passthrough.

Throughput: a topic is pre-filled with N events; the clock runs from the first output record to the last.
Latency: events are produced live at a fixed rate; latency is the time the output record is read minus the
event's own timestamp (set at send time), i.e. what a consumer of the output topic experiences.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaConsumer, TopicPartition

from fraudmon.core.config import Settings
from fraudmon.tools.demo import percentile
from fraudmon.tools.harness import delete_state, run_state_prefix, start_worker, stop_process, wait_for_group
from fraudmon.tools.stack import create_topics


@dataclass
class Topics:
    source: str
    output: str
    flagged: str
    dead_letter: str


def _new_topics(settings: Settings, label: str) -> Topics:
    run = uuid.uuid4().hex[:6]
    topics = Topics(*(f"bench-{label}-{name}-{run}" for name in ("in", "scores", "flagged", "dlq")))
    create_topics(settings.kafka.bootstrap_servers, list(vars(topics).values()), settings.topics.partitions)
    return topics


class OutputTimer:
    """Reads an output topic in a thread and records (event time, receive time) per transaction."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.received: dict[str, tuple[float, float]] = {}
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=10,
            max_poll_records=5000, **settings.kafka.client_options(),
        )
        self._consumer.assign([TopicPartition(topic, p) for p in self._consumer.partitions_for_topic(topic)])
        self._consumer.seek_to_end()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for records in self._consumer.poll(timeout_ms=20).values():
                now = time.time()
                for record in records:
                    value = json.loads(record.value)
                    event_time = value.get("event_time") or value.get("timestamp")
                    self.received.setdefault(
                        value["transaction_id"], (datetime.fromisoformat(event_time).timestamp(), now)
                    )

    def wait(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.received) >= count

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()

    def throughput(self) -> float:
        times = [received for _, received in self.received.values()]
        return len(times) / max(1e-9, max(times) - min(times)) if len(times) > 1 else 0.0

    def latencies_ms(self) -> list[float]:
        return [(received - event) * 1000.0 for event, received in self.received.values()]


class Passthrough:
    """The baseline: consume raw bytes, produce them unchanged to the output topic, in its own event loop."""

    def __init__(self, settings: Settings, topics: Topics) -> None:
        self.settings, self.topics = settings, topics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        bootstrap = self.settings.kafka.bootstrap_servers
        consumer = AIOKafkaConsumer(
            self.topics.source, bootstrap_servers=bootstrap, group_id=f"passthrough-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest", max_poll_records=self.settings.worker.max_batch,
        )
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
        await consumer.start()
        await producer.start()
        try:
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=self.settings.worker.batch_window_ms or 5)
                for records in batches.values():
                    for record in records:
                        await producer.send(self.topics.output, record.value, key=record.key)
        finally:
            await producer.stop()
            await consumer.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def _events(n: int, seed: int, duration_s: float):
    from training.simulate import SimulationConfig, simulate

    events, _ = simulate(SimulationConfig(
        n_events=n, n_accounts=max(500, n // 3), start=datetime.now(UTC), duration=timedelta(seconds=duration_s),
        seed=seed,
    ))
    return events


class WorkerUnderTest:
    """One worker with the model and all rules on, its rule state under a prefix of its own (removed after)."""

    def __init__(self, settings: Settings, topics: Topics, log_path: Path) -> None:
        self.settings = settings
        self.group = f"bench-worker-{uuid.uuid4().hex[:6]}"
        self.state_prefix = run_state_prefix(settings, "bench")
        self.process = start_worker(settings, log_path, {
            "FRAUDMON_TOPICS__TRANSACTIONS": topics.source, "FRAUDMON_TOPICS__SCORES": topics.output,
            "FRAUDMON_TOPICS__FLAGGED": topics.flagged, "FRAUDMON_TOPICS__DEAD_LETTER": topics.dead_letter,
            "FRAUDMON_WORKER__APP_ID": self.group, "FRAUDMON_METRICS_PORT": "0", "FRAUDMON_LOG_LEVEL": "WARNING",
            "FRAUDMON_REDIS__KEY_PREFIX": self.state_prefix,
        })
        wait_for_group(settings, self.group, timeout_s=90)

    def stop(self) -> None:
        stop_process(self.process)
        delete_state(self.settings, self.state_prefix)


def measure_throughput(settings: Settings, system: str, n: int, out_dir: Path) -> dict:
    """Pre-fill N events, then run the system over them; events/s between first and last output."""
    from fraudmon.tools.produce import produce_events

    topics = _new_topics(settings, f"tp-{system}")
    produce_events(settings, _events(n, 11, 600), topic=topics.source, rate=None, live_time=False, progress=False)
    timer = OutputTimer(settings, topics.output)
    runner = WorkerUnderTest(settings, topics, out_dir / "bench-worker.log") if system == "worker" else \
        Passthrough(settings, topics)
    try:
        complete = timer.wait(n, timeout_s=max(120.0, n / 500))
    finally:
        runner.stop()
        timer.close()
    return {"system": system, "events": n, "complete": complete, "events_per_s": round(timer.throughput(), 1)}


def measure_latency(settings: Settings, system: str, rates: list[int], seconds: float, out_dir: Path) -> list[dict]:
    """Produce live at each rate; end-to-end percentiles as the output topic's consumer sees them."""
    from fraudmon.tools.produce import produce_events

    topics = _new_topics(settings, f"lat-{system}")
    timer = OutputTimer(settings, topics.output)
    runner = WorkerUnderTest(settings, topics, out_dir / "bench-worker.log") if system == "worker" else \
        Passthrough(settings, topics)
    results = []
    try:
        for seed, rate in enumerate(rates):
            n = int(rate * seconds)
            events = _events(n, 100 + seed, seconds)
            before = len(timer.received)
            produce_events(settings, events, topic=topics.source, rate=rate, live_time=True, progress=False)
            timer.wait(before + n, timeout_s=60)
            ids = {e.transaction_id for e in events}
            latencies = [(r - e) * 1000.0 for tx, (e, r) in timer.received.items() if tx in ids]
            results.append({
                "system": system, "rate": rate, "events": n, "received": len(latencies),
                **{f"p{q}_ms": round(percentile(latencies, q), 2) for q in (50, 95, 99)},
            })
    finally:
        runner.stop()
        timer.close()
    return results


def run_bench(settings: Settings, *, events: int, rates: list[int], seconds: float, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    throughput = [measure_throughput(settings, system, events, out_dir) for system in ("passthrough", "worker")]
    latency = []
    for system in ("passthrough", "worker"):
        latency += measure_latency(settings, system, rates, seconds, out_dir)
    ratio = throughput[1]["events_per_s"] / max(1e-9, throughput[0]["events_per_s"])
    report = {"throughput": throughput, "worker_vs_passthrough": round(ratio, 3), "latency": latency,
              "cpu_count": os.cpu_count(), "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    _plot(latency, out_dir / "latency.png")
    return report


def _plot(latency: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for system in ("passthrough", "worker"):
        rows = [r for r in latency if r["system"] == system]
        for q, style in (("p50_ms", "-o"), ("p99_ms", "--o")):
            ax.plot([r["rate"] for r in rows], [r[q] for r in rows], style, label=f"{system} {q[:-3]}")
    ax.set_xlabel("events/s")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("fraud-monitor worker vs aiokafka passthrough")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_report(report: dict) -> None:
    print("\nthroughput (pre-filled topic, first to last output)")
    for row in report["throughput"]:
        print(f"  {row['system']:<12} {row['events_per_s']:>10,.0f} events/s  ({row['events']} events)")
    print(f"  worker / passthrough = {report['worker_vs_passthrough']:.2f}")
    print("\nend-to-end latency at fixed rates (ms)")
    print(f"  {'system':<12} {'rate':>6} {'p50':>8} {'p95':>8} {'p99':>8} {'received':>9}")
    for row in report["latency"]:
        print(f"  {row['system']:<12} {row['rate']:>6} {row['p50_ms']:>8} {row['p95_ms']:>8} {row['p99_ms']:>8} "
              f"{row['received']:>6}/{row['events']}")
