"""`fraudmon chaos`: a real worker against poison messages, its own SIGKILL, a Redis crash and a broker restart,
with the accounting that shows nothing was lost.

Each scenario runs on a stack of its own (Kafka and Redis on free ports in a temporary directory), so killing its
services harms nothing else. The accounting per scenario: valid events sent, distinct events decided, lost (sent
but never decided), duplicate decisions and whether they agree with the first, dead letters and whether each one
names the field its poison message breaks, whether the worker survived, and whether the rule state in Redis counts
each decided event exactly once.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
import redis
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from fraudmon.core.config import Settings, load_settings
from fraudmon.tools.harness import OutputReader, start_worker, stop_process, wait_for_group
from fraudmon.tools.poison import PoisonMessage, interleave, names_field, poison_messages, valid_event
from fraudmon.tools.stack import LocalStack, create_topics, free_port, isolated_settings

SCENARIOS = ("poison", "worker-kill", "failover", "redis-kill", "broker-restart")


@dataclass
class Accounting:
    """What one scenario sent and what came out."""

    scenario: str
    sent: int = 0
    malformed: int = 0
    decided: int = 0
    lost: int = 0
    duplicates: int = 0
    disagreeing: int = 0
    dead_letters: int = 0
    misnamed: list[str] = field(default_factory=list)
    degraded: int = 0
    worker_alive: bool = True
    state_exact: bool = True
    max_delay_s: float = 0.0  # the longest an event waited for its decision (event time to decided_at)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.decided == self.sent and self.disagreeing == 0
                and self.dead_letters == self.malformed and not self.misnamed and self.worker_alive
                and self.state_exact)

    def row(self) -> str:
        return (f"{self.scenario:<15} {self.sent:>6} {self.decided:>8} {self.lost:>5} {self.duplicates:>5}"
                f"{'' if not self.disagreeing else '!':>1} {self.dead_letters:>7}/{self.malformed:<5}"
                f"{len(self.misnamed):>9} {self.degraded:>9} {'yes' if self.worker_alive else 'NO':>6}"
                f" {'yes' if self.state_exact else 'NO':>6} {self.max_delay_s:>9.1f} {self.seconds:>6.1f}"
                f"  {'ok' if self.ok else 'FAILED'}")


TABLE_HEADER = (f"{'scenario':<15} {'sent':>6} {'decided':>8} {'lost':>5} {'dups':>6} {'dead letters':>13}"
                f"{'misnamed':>9} {'degraded':>9} {'alive':>6} {'state':>6} {'max delay':>9} {'s':>6}  result")


def _same(first: dict, other: dict) -> bool:
    """A duplicate decision agrees when it decides the same for the same reasons on the same score (to float32
    precision: onnxruntime's last digit depends on the batch an event was scored in)."""
    def key(d: dict) -> tuple:
        return d["decision"], tuple(d["reasons"]), tuple(h["id"] for h in d["rules"])
    scores = [(d.get("model") or {}).get("score") for d in (first, other)]
    same_score = scores[0] == scores[1] or (None not in scores and math.isclose(*scores, rel_tol=1e-4, abs_tol=1e-6))
    return key(first) == key(other) and same_score


class Rig:
    """A throwaway stack, topics and worker for one scenario."""

    def __init__(self, base: Settings, workdir: Path, name: str) -> None:
        self.name = name
        self.workdir = workdir
        settings = isolated_settings(base, workdir / "stack")
        # Redis fsyncs every write: with the default (every second) a Redis crash under disk load can take the
        # last second or two of recorded state with it, which is Redis' durability, not the worker's to check.
        self.settings = settings.model_copy(update={
            "stack": settings.stack.model_copy(update={"redis_appendfsync": "always"})})
        self.stack = LocalStack(self.settings)
        run = uuid.uuid4().hex[:8]
        self.topics = {kind: f"chaos-{name}-{kind}-{run}" for kind in ("transactions", "scores", "flagged", "dlq")}
        self.group = f"chaos-{name}-{run}"
        self.prefix = f"chaos-{run}:"
        self.workers: list = []
        self.metrics_ports: list[int] = []  # each worker's, in start order

    def up(self) -> None:
        self.stack.up(services=("kafka", "redis"))
        create_topics(self.settings.kafka.bootstrap_servers, list(self.topics.values()), 6)

    def start_worker(self, wait: bool = True):
        env = {
            "FRAUDMON_TOPICS__TRANSACTIONS": self.topics["transactions"],
            "FRAUDMON_TOPICS__SCORES": self.topics["scores"], "FRAUDMON_TOPICS__FLAGGED": self.topics["flagged"],
            "FRAUDMON_TOPICS__DEAD_LETTER": self.topics["dlq"],
            "FRAUDMON_WORKER__APP_ID": self.group, "FRAUDMON_METRICS_PORT": str(self._metrics_port()),
            "FRAUDMON_REDIS__KEY_PREFIX": self.prefix, "FRAUDMON_WORKER__DATA_DIR": str(self.workdir / "faust"),
            # A shared 2-core machine: Redis gets a quarter second before a batch counts as degraded.
            "FRAUDMON_LATENCY_BUDGET_MS": "500", "FRAUDMON_WORKER__REDIS_RETRY_AFTER_S": "0.5",
        }
        worker = start_worker(self.settings, self.workdir / f"worker-{len(self.workers)}.log", env)
        self.workers.append(worker)
        if wait:
            wait_for_group(self.settings, self.group, timeout_s=90)
        return worker

    def _metrics_port(self) -> int:
        self.metrics_ports.append(free_port())
        return self.metrics_ports[-1]

    def producer(self) -> KafkaProducer:
        return KafkaProducer(bootstrap_servers=self.settings.kafka.bootstrap_servers, acks="all", linger_ms=5,
                             enable_idempotence=True, max_request_size=2 << 20, max_block_ms=120_000,
                             reconnect_backoff_max_ms=1000)

    def outputs(self) -> OutputReader:
        return OutputReader(self.settings, [self.topics["scores"]], self.topics["dlq"], from_beginning=True).start()

    def account_counts(self) -> dict[str, int]:
        """How many events Redis' rule state recorded per account (`n` of the account's history hashes, one per
        ttl of the aggregates by account_id: `<prefix>{account_id:<account>}:h<ttl_ms>`)."""
        client = redis.Redis.from_url(self.settings.redis.url)
        counts: dict[str, int] = {}
        head = f"{self.prefix}{{account_id:"
        for key in client.scan_iter(f"{head}*}}:h*", count=1000):
            account = key.decode()[len(head):].rpartition("}:h")[0]
            counts[account] = max(counts.get(account, 0), int(client.hget(key, "n") or 0))
        return counts

    def down(self) -> None:
        for worker in self.workers:
            stop_process(worker)
        self.stack.down()


def _account(rig: Rig, outputs: OutputReader, sent: dict[str, dict], poison: dict[tuple[int, int], PoisonMessage],
             acc: Accounting, started: float) -> Accounting:
    """Fill in the accounting from what came out."""
    acc.seconds = time.monotonic() - started
    acc.sent, acc.malformed = len(sent), len(poison)
    acc.decided = sum(1 for tx in sent if outputs.decisions.get(tx))
    acc.lost = acc.sent - acc.decided
    for seen in outputs.decisions.values():
        decisions = [decision for decision, _ in seen]
        acc.duplicates += len(decisions) - 1
        disagreeing = [d for d in decisions[1:] if not _same(decisions[0], d)]
        if disagreeing and not acc.disagreeing:
            acc.notes.append(f"a duplicate disagrees: {decisions[0]} vs {disagreeing[0]}")
        acc.disagreeing += len(disagreeing)
        acc.degraded += decisions[0]["degraded"]
        delay_s = (_epoch_s(decisions[0]["decided_at"]) - _epoch_s(decisions[0]["event_time"]))
        acc.max_delay_s = max(acc.max_delay_s, delay_s)
    acc.dead_letters = len(outputs.dead_letters)
    for letter in outputs.dead_letters:
        message = poison.get((letter["partition"], letter["offset"]))
        if message is None or not names_field(message, letter["error"]):
            acc.misnamed.append(f"{message.kind if message else 'unexpected'}: {letter['error'][:80]}")
    acc.worker_alive = any(w.poll() is None for w in rig.workers)
    expected = Counter(event["account_id"] for event in sent.values())
    recorded = rig.account_counts()
    wrong = {a: (recorded.get(a, 0), n) for a, n in expected.items() if recorded.get(a, 0) != n}
    acc.state_exact = not wrong
    if wrong:
        acc.notes.append(f"state counts (recorded, decided) differ for {len(wrong)} accounts, e.g. "
                         f"{dict(list(wrong.items())[:3])}")
    return acc


def _wait(outputs: OutputReader, decided: int, dead_letters: int, timeout_s: float) -> None:
    """Until every expected outcome arrived, then a moment more for duplicates to show."""
    if outputs.wait_for(lambda seen: len(seen.decisions) >= decided and len(seen.dead_letters) >= dead_letters,
                        timeout_s):
        time.sleep(2.0)


def _epoch_s(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _stream(rig: Rig, producer: KafkaProducer, events: list[dict], rate: float, at: float,
            disrupt: Callable[[], None]) -> None:
    """Send `events` at `rate` per second; call `disrupt` once a fraction `at` of them is out."""
    started = time.monotonic()
    disrupted = False
    for i, event in enumerate(events):
        if not disrupted and i >= at * len(events):
            producer.flush()
            disrupt()
            disrupted = True
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        event = {**event, "timestamp": int(time.time() * 1000)}
        producer.send(rig.topics["transactions"], key=event["account_id"].encode(), value=orjson.dumps(event))
    producer.flush()


def _valid_events(n: int, run: str, accounts: int = 40) -> list[dict]:
    now_ms = int(time.time() * 1000)
    return [{**valid_event(i, now_ms), "transaction_id": f"{run}-{i}", "account_id": f"{run}-acc-{i % accounts}"}
            for i in range(n)]


def run_poison(rig: Rig, acc: Accounting) -> tuple[dict, dict, OutputReader]:
    """Every poison kind between valid events, all at once."""
    records = interleave(poison_messages(), valid_count=2)
    producer = rig.producer()
    futures = [(record, producer.send(rig.topics["transactions"], key=record.key, value=record.value))
               for record in records]
    producer.flush()
    sent, poison = {}, {}
    for record, future in futures:
        metadata = future.get(timeout=60)
        if record.expected is None:
            event = orjson.loads(record.value)
            sent[event["transaction_id"]] = event
        else:
            poison[(metadata.partition, metadata.offset)] = record.expected
    producer.close()
    outputs = rig.outputs()
    _wait(outputs, len(sent), len(poison), timeout_s=120)
    return sent, poison, outputs


def _disrupted_stream(rig: Rig, disrupt: Callable[[], None], n: int = 3000, rate: float = 500.0,
                      timeout_s: float = 150) -> tuple[dict, dict, OutputReader]:
    events = _valid_events(n, rig.name)
    outputs = rig.outputs()
    producer = rig.producer()
    _stream(rig, producer, events, rate, 0.4, disrupt)
    producer.close()
    _wait(outputs, len(events), 0, timeout_s=timeout_s)
    return {e["transaction_id"]: e for e in events}, {}, outputs


def run_worker_kill(rig: Rig, acc: Accounting) -> tuple[dict, dict, OutputReader]:
    """SIGKILL the worker mid-stream, start another in its group."""
    def disrupt() -> None:
        rig.workers[0].kill()
        rig.workers[0].wait()
        rig.start_worker(wait=False)
    return _disrupted_stream(rig, disrupt)


def run_failover(rig: Rig, acc: Accounting) -> tuple[dict, dict, OutputReader]:
    """Two workers share the partitions; SIGKILL one and let the other take over (max delay = failover time)."""
    rig.start_worker(wait=False)
    wait_for_group(rig.settings, rig.group, timeout_s=90, members=2)

    def disrupt() -> None:
        rig.workers[0].kill()
        rig.workers[0].wait()
    return _disrupted_stream(rig, disrupt)


def run_redis_kill(rig: Rig, acc: Accounting) -> tuple[dict, dict, OutputReader]:
    """SIGKILL Redis mid-stream; start it again (same append-only file) three seconds later."""
    def disrupt() -> None:
        rig.stack.down(services=("redis",), kill=True)
        threading.Timer(3.0, lambda: rig.stack.up(services=("redis",))).start()
    sent, poison, outputs = _disrupted_stream(rig, disrupt)
    _wait_backlog_recorded(rig)
    return sent, poison, outputs


def run_broker_restart(rig: Rig, acc: Accounting) -> tuple[dict, dict, OutputReader]:
    """Stop the broker mid-stream (SIGTERM) and start it again."""
    def disrupt() -> None:
        rig.stack.down(services=("kafka",))
        rig.stack.up(services=("kafka",))
    return _disrupted_stream(rig, disrupt, timeout_s=240)


def _wait_backlog_recorded(rig: Rig, timeout_s: float = 60.0) -> None:
    """Events decided while Redis was down are recorded with the next batches: send one event every half second
    until the worker's `fraud_state_backlog_events` is 0 after at least one of them (or `timeout_s` passes)."""
    deadline = time.monotonic() + timeout_s
    producer = rig.producer()
    i = 0
    while time.monotonic() < deadline:
        event = _valid_events(1, f"{rig.name}-tick-{i}", accounts=1)[0]  # new batches flush the backlog
        producer.send(rig.topics["transactions"], key=b"tick", value=orjson.dumps(event))
        producer.flush()
        i += 1
        time.sleep(0.5)
        if i >= 2 and _backlog(rig.metrics_ports[-1]) == 0:
            break
    producer.close()


def _backlog(metrics_port: int) -> float | None:
    """The worker's `fraud_state_backlog_events` from its /metrics (None when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == "fraud_state_backlog_events":
            return next((sample.value for sample in family.samples), None)
    return None


RUNNERS: dict[str, Callable[[Rig, Accounting], tuple[dict, dict, OutputReader]]] = {
    "poison": run_poison, "worker-kill": run_worker_kill, "failover": run_failover, "redis-kill": run_redis_kill,
    "broker-restart": run_broker_restart,
}


@contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    path = Path(tempfile.mkdtemp(prefix="fraudmon-chaos-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_scenario(name: str, base: Settings | None = None, workdir: Path | None = None) -> Accounting:
    """Run one scenario on a stack of its own and return its accounting."""
    base = base or load_settings()
    with _workdir(workdir) as path:
        rig = Rig(base, path / name, name)
        acc = Accounting(name)
        try:
            rig.up()
            rig.start_worker()
            started = time.monotonic()
            sent, poison, outputs = RUNNERS[name](rig, acc)
            outputs.stop()
            _account(rig, outputs, sent, poison, acc, started)
            if name == "redis-kill" and acc.degraded == 0:
                acc.notes.append("no decision was degraded: Redis was not down while events were decided")
        finally:
            rig.down()
        return acc
