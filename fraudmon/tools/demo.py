"""`fraudmon demo`: a bounded end-to-end run on the local stack, with a summary against ground truth.

Brings the stack up, starts a worker, produces a labelled simulated stream (plus some malformed events),
reads `transaction-scores`, `flagged-transactions` and the dead-letter topic, prints what happened, and stops
what it started.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from fraudmon.core.config import Settings, project_dir
from fraudmon.core.errors import FraudMonitorError
from fraudmon.tools.stack import LocalStack
from stream_app.replay import flags_by_reason, recall_by_scenario


@dataclass
class OutputCollector:
    """Reads the output topics from their current end in a background thread."""

    settings: Settings
    decisions: dict[str, tuple[dict, float]] = field(default_factory=dict)
    flagged: set[str] = field(default_factory=set)
    dead_letters: list[dict] = field(default_factory=list)
    duplicates: int = 0

    def __post_init__(self) -> None:
        topics = self.settings.topics
        self._consumer = KafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers, enable_auto_commit=False,
            fetch_max_wait_ms=20, **self.settings.kafka.client_options(),
        )
        partitions = []
        for topic in (topics.scores, topics.flagged, topics.dead_letter):
            ids = self._consumer.partitions_for_topic(topic) or set()
            partitions += [TopicPartition(topic, p) for p in ids]
        self._consumer.assign(partitions)
        self._consumer.seek_to_end()
        for partition in partitions:
            self._consumer.position(partition)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        topics = self.settings.topics
        while not self._stop.is_set():
            for tp, records in self._consumer.poll(timeout_ms=50).items():
                received = time.time()
                for record in records:
                    value = json.loads(record.value)
                    if tp.topic == topics.dead_letter:
                        self.dead_letters.append(value)
                    elif tp.topic == topics.flagged:
                        self.flagged.add(value["transaction_id"])
                    elif value["transaction_id"] in self.decisions:
                        self.duplicates += 1
                    else:
                        self.decisions[value["transaction_id"]] = (value, received)

    def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.1)
        return condition()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


def group_members(admin: KafkaAdminClient, group: str) -> tuple[str | None, list[dict[str, list[int]]]]:
    """The consumer group's state and, per member, its assigned partitions by topic (`(None, [])` if unknown)."""
    logging.getLogger("kafka.admin._groups").setLevel(logging.ERROR)  # it cannot decode Faust's member metadata
    try:
        described = admin.describe_groups([group]).get(group) or {}
    except KafkaError:  # e.g. no coordinator yet for a brand-new group
        return None, []
    members = []
    for member in described.get("members") or []:
        assignment = (member.get("member_assignment") or {}).get("assigned_partitions") or []
        members.append({part["topic"]: list(part["partitions"]) for part in assignment})
    return described.get("group_state"), members


def wait_for_group(settings: Settings, group: str, timeout_s: float = 60.0, members: int = 1) -> None:
    """Wait until the worker's consumer group is stable with `members` members holding partitions."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers, **settings.kafka.client_options())
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            state, assigned = group_members(admin, group)
            if state == "Stable" and len(assigned) >= members and all(assigned):
                return
            time.sleep(0.5)
    finally:
        admin.close()
    raise FraudMonitorError(f"the worker did not join consumer group {group!r} within {timeout_s:.0f}s")


def start_worker(settings: Settings, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A `fraudmon worker` subprocess on `settings`' Kafka and Redis, Faust's web server off, plus `env`
    (any `FRAUDMON_*` override); its output goes to `log_path`."""
    log = log_path.open("ab")
    base = {"FRAUDMON_KAFKA_BOOTSTRAP": settings.kafka.bootstrap_servers, "FRAUDMON_REDIS_URL": settings.redis.url,
            "FRAUDMON_WORKER__WEB_PORT": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "fraudmon.cli", "worker"], cwd=project_dir(),
        env={**os.environ, **base, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def run_state_prefix(settings: Settings, run: str) -> str:
    """A Redis key prefix of its own for one demo or benchmark run. The simulator reuses account ids and
    transaction ids, so an earlier run's state would otherwise count towards this run's (or mark its events
    as already seen); `delete_state` removes it afterwards."""
    return f"{settings.redis.key_prefix}{run}-{uuid.uuid4().hex[:8]}:"


def delete_state(settings: Settings, prefix: str) -> None:
    client = redis.Redis.from_url(settings.redis.url)
    batch = []
    for key in client.scan_iter(f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def stop_process(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarise(
    collector: OutputCollector, truth: dict[str, tuple[int, str]], produced: int, malformed: int,
    started_s: float,
) -> dict:
    """Counts, flag reasons, precision/recall (overall and per scenario), dead letters and latency."""
    decisions = [value for value, _ in collector.decisions.values()]
    latencies_ms = []
    for value, received in collector.decisions.values():
        event_s = datetime.fromisoformat(value["event_time"]).timestamp()
        latencies_ms.append((received - event_s) * 1000.0)
    flagged = [d for d in decisions if d["decision"] == "flag"]
    tp = sum(1 for d in flagged if truth.get(d["transaction_id"], (0, ""))[0] == 1)
    frauds = sum(1 for label, _ in truth.values() if label == 1)
    last_received = max((received for _, received in collector.decisions.values()), default=started_s)
    return {
        "produced_valid": produced,
        "produced_malformed": malformed,
        "decisions": len(decisions),
        "duplicate_decisions": collector.duplicates,
        "flags": len(flagged),
        "flagged_topic_messages": len(collector.flagged),
        "flags_by_reason": flags_by_reason(decisions),
        "precision": tp / len(flagged) if flagged else 0.0,
        "recall": tp / frauds if frauds else 0.0,
        "recall_by_scenario": recall_by_scenario(decisions, truth),
        "dead_letters": len(collector.dead_letters),
        "dead_letter_reasons": dict(Counter(letter["error"].split(":")[0] for letter in collector.dead_letters)),
        "degraded": sum(1 for d in decisions if d["degraded"]),
        "end_to_end_ms": {q: round(percentile(latencies_ms, q), 2) for q in (50, 95, 99)},
        "processing_ms": {q: round(percentile([d["latency_ms"] for d in decisions], q), 2) for q in (50, 99)},
        "throughput_per_s": round(len(decisions) / max(1e-9, last_received - started_s), 1),
    }


def print_summary(summary: dict, out_dir: Path) -> None:
    print("\n=== fraud-monitor demo summary ===")
    print(f"events produced      {summary['produced_valid']} valid + {summary['produced_malformed']} malformed")
    print(f"decisions            {summary['decisions']} (duplicates {summary['duplicate_decisions']})")
    print(f"flags                {summary['flags']} (on flagged-transactions: {summary['flagged_topic_messages']})")
    for reason, count in summary["flags_by_reason"].items():
        print(f"  {reason:<26} {count}")
    print(f"precision / recall   {summary['precision']:.3f} / {summary['recall']:.3f}")
    for name, entry in summary["recall_by_scenario"].items():
        print(f"  recall {name:<19} {entry['recall']:.2f}  ({entry['flagged']}/{entry['frauds']})")
    print(f"dead letters         {summary['dead_letters']} {summary['dead_letter_reasons']}")
    print(f"degraded decisions   {summary['degraded']}")
    e2e = summary["end_to_end_ms"]
    print(f"end-to-end latency   p50 {e2e[50]} ms, p95 {e2e[95]} ms, p99 {e2e[99]} ms")
    print(f"throughput           {summary['throughput_per_s']} decisions/s")
    print(f"\nfull summary: {out_dir / 'summary.json'}; worker log: {out_dir / 'worker.log'}")
    print("\nnext: `fraudmon demo --keep-running` leaves Kafka, Redis and Prometheus up to look around "
          "(alerts at http://127.0.0.1:9090/alerts);\n      `fraudmon stack up` + `fraudmon worker` + "
          "`fraudmon produce --simulate --rate 500` runs it by hand;\n      `fraudmon simulate -o ev.jsonl --truth "
          "truth.csv` then `fraudmon replay ev.jsonl --truth truth.csv` backtests rules offline.")


def run_demo(
    settings: Settings, *, duration_s: float, rate: float, malformed: int, seed: int, keep_running: bool,
    out_dir: Path,
) -> dict:
    """Run the demo end to end; return the summary (also written to `out_dir/summary.json`)."""
    from fraudmon.tools.produce import produce_events
    from training.simulate import SimulationConfig, simulate, write_ground_truth

    out_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(settings)
    was_running = all(s.running for s in stack.status())
    print("demo: bringing up Kafka, Redis and Prometheus ...")
    stack.up()
    model_path = settings.resolve(settings.worker.model_path)
    if not model_path.exists():
        raise FraudMonitorError(f"no model at {model_path}: run `fraudmon train --simulate 100000` first")

    n_events = int(rate * duration_s)
    events, truth = simulate(SimulationConfig(
        n_events=n_events, n_accounts=max(200, n_events // 2), start=datetime.now(UTC),
        duration=timedelta(seconds=duration_s), seed=seed,
    ))
    write_ground_truth(out_dir / "truth.csv", truth)
    truth_map = {t.transaction_id: (t.label, t.scenario) for t in truth}

    print("demo: starting the worker ...")
    state_prefix = run_state_prefix(settings, "demo")
    worker = start_worker(settings, out_dir / "worker.log", {"FRAUDMON_REDIS__KEY_PREFIX": state_prefix})
    collector = OutputCollector(settings)
    try:
        wait_for_group(settings, settings.worker.app_id)
        collector.start()
        started = time.time()
        print(f"demo: producing {n_events} simulated events at {rate:.0f}/s plus {malformed} malformed ...")
        produce_events(
            settings, events, topic=settings.topics.transactions, rate=rate, live_time=True,
            malformed=malformed, progress=True,
        )
        complete = collector.wait_for(
            lambda: len(collector.decisions) >= n_events and len(collector.dead_letters) >= malformed, 60
        )
        if worker.poll() is not None:
            raise FraudMonitorError(f"the worker exited with {worker.returncode}; see {out_dir / 'worker.log'}")
        summary = summarise(collector, truth_map, n_events, malformed, started)
        summary["complete"] = complete
    finally:
        collector.stop()
        stop_process(worker)
        delete_state(settings, state_prefix)
        if not keep_running and not was_running:
            stack.down()
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, out_dir)
    if keep_running or was_running:
        print("the stack is still running: `fraudmon stack status`, Prometheus on "
              f"http://127.0.0.1:{settings.stack.prometheus_port}; stop it with `fraudmon stack down`")
    return summary
