"""Starting, watching and stopping real workers from outside: what the demo, the benchmark, the chaos suite and
the tests share. Workers run as `fraudmon worker` subprocesses; outputs are read back with a plain consumer."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
import redis
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from fraudmon.core.config import Settings, project_dir
from fraudmon.core.errors import FraudMonitorError


class OutputReader:
    """Reads output topics (decisions and dead letters) in a background thread, from their current end or from
    the beginning. Keeps every decision per transaction id (more than one is a duplicate), each with its record's
    Kafka timestamp in seconds (when the worker published it, or the broker's append time on a LogAppendTime
    topic: not when this reader got to it, so its own polling and parsing stay out of a latency), and the dead
    letters; a topic of `flagged` ids is tracked apart when given."""

    def __init__(self, settings: Settings, decisions: Iterable[str], dead_letters: str | None = None,
                 flagged: str | None = None, from_beginning: bool = False) -> None:
        self.decisions: dict[str, list[tuple[dict, float]]] = defaultdict(list)
        self.dead_letters: list[dict] = []
        self.flagged: set[str] = set()
        self._decision_topics = set(decisions)
        self._dead_letter_topic, self._flagged_topic = dead_letters, flagged
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=20,
            max_poll_records=5000, reconnect_backoff_max_ms=1000, **settings.kafka.client_options(),
        )
        partitions = [TopicPartition(topic, p) for topic in [*self._decision_topics, dead_letters, flagged] if topic
                      for p in self._consumer.partitions_for_topic(topic) or ()]
        self._consumer.assign(partitions)
        if from_beginning:
            self._consumer.seek_to_beginning()
        else:
            self._consumer.seek_to_end()
        for partition in partitions:
            self._consumer.position(partition)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> OutputReader:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batches = self._consumer.poll(timeout_ms=50)
            except KafkaError:  # a broker restart: read on once it is back
                time.sleep(0.5)
                continue
            with self._lock:
                for tp, records in batches.items():
                    for record in records:
                        value = orjson.loads(record.value)
                        if tp.topic == self._dead_letter_topic:
                            self.dead_letters.append(value)
                        elif tp.topic == self._flagged_topic:
                            self.flagged.add(value["transaction_id"])
                        else:
                            self.decisions[value["transaction_id"]].append((value, record.timestamp / 1000.0))

    @property
    def duplicates(self) -> int:
        with self._lock:
            return sum(len(seen) - 1 for seen in self.decisions.values())

    def first_decisions(self) -> list[tuple[dict, float]]:
        """Each transaction's first decision and its record's timestamp (seconds)."""
        with self._lock:
            return [seen[0] for seen in self.decisions.values()]

    def wait_for(self, condition: Callable[[OutputReader], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if condition(self):
                    return True
            time.sleep(0.1)
        with self._lock:
            return condition(self)

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


def start_worker(settings: Settings, log_path: Path, env: dict[str, str] | None = None,
                 processes: int = 1) -> subprocess.Popen:
    """A `fraudmon worker [--processes N]` subprocess (in a process group of its own) on `settings`' Kafka and
    Redis, Faust's web server off, plus `env` (any `FRAUDMON_*` override); its output goes to `log_path`."""
    log = log_path.open("ab")
    base = {"FRAUDMON_KAFKA_BOOTSTRAP": settings.kafka.bootstrap_servers, "FRAUDMON_REDIS_URL": settings.redis.url,
            "FRAUDMON_WORKER__WEB_PORT": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "fraudmon.cli", "worker", "--processes", str(processes)], cwd=project_dir(),
        env={**os.environ, **base, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop_process(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group, SIGKILL it if it has not ended after `timeout_s`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_state_prefix(settings: Settings, run: str) -> str:
    """A Redis key prefix of its own for one run. The simulator reuses account and transaction ids, so an earlier
    run's state would otherwise count towards this run's (or mark its events as already seen); `delete_state`
    removes it afterwards."""
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


def supervise_workers(count: int, metrics_port: int, env: dict[str, str] | None = None,
                      stop_timeout_s: float = 30.0) -> int:
    """Run `count` worker processes in one consumer group (metrics on `metrics_port`, `metrics_port + 1`, ...,
    or all off with 0; Faust's web server off) until SIGTERM or SIGINT, or until one of them exits; then stop them all.
    Returns the first non-zero exit code of a worker that ended on its own, else 0."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers = [
        subprocess.Popen([sys.executable, "-m", "fraudmon.cli", "worker"], cwd=project_dir(), env={
            **os.environ, **(env or {}), "FRAUDMON_METRICS_PORT": str(metrics_port + i if metrics_port else 0),
            "FRAUDMON_WORKER__WEB_PORT": "0"})
        for i in range(count)
    ]
    try:
        while not stop.is_set() and all(w.poll() is None for w in workers):
            stop.wait(0.5)
        ended = [w.returncode for w in workers if w.poll() is not None]
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout_s
        for worker in workers:
            try:
                worker.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        return next((code for code in ended if code), 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
