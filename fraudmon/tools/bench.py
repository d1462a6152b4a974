"""`fraudmon bench`: one worker's throughput and end-to-end latency next to peers measured in the same run on the
same broker: bare aiokafka and confluent-kafka consume-and-produce passthroughs, the worker's own Faust transport
with no engine (its floor), and a Quix Streams scoring pipeline (`fraudmon.tools.bench_peers`).

The clock is the broker's. Every bench topic is created with `message.timestamp.type=LogAppendTime`, so each
record carries the time the broker appended it, and nothing is timed in band: the systems run as processes of
their own, and the bench reads the topics back only after a run.

- Throughput: N events are pre-filled into one topic; each system drains it with a consumer group and an output
  topic of its own; throughput = records / (last - first output append time).
- Latency: events are produced at a fixed rate (from this process, with confluent-kafka when the `bench` extra is
  installed, so that the load generator takes little of the cores the system under test needs) into a fresh
  input topic; latency = output append time - input append time of the same transaction id, joined after the
  run.
- Overload: the worker, warm, gets a burst at 150% of its measured drain maximum for 10 s, then 50% for 30 s:
  its degraded and lost decisions, its peak lag (events appended and not yet decided, by the broker's clock) and
  the seconds from the burst's end until the lag is back to 0 (no event older than 100 ms undecided).
- The worker's CPU time per event (/proc/<pid>/stat utime + stime while it drained the topic) and peak RSS
  (VmHWM) come from /proc; so do the peers'.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError

from fraudmon.core.config import Settings, project_dir
from fraudmon.core.errors import FraudMonitorError
from fraudmon.core.events import Event
from fraudmon.tools.demo import percentile
from fraudmon.tools.harness import delete_state, run_state_prefix, start_worker, stop_process, wait_for_group

SYSTEMS = ("worker", "worker2", "aiokafka", "faust", "confluent", "quix")
WORKERS = {"worker": 1, "worker2": 2}
"""The worker systems and their processes (`fraudmon worker --processes N`)."""
LATENCY_SYSTEMS = ("worker", "aiokafka", "faust")
PEER_NEEDS = {"confluent": ("confluent_kafka", "confluent-kafka"), "quix": ("quixstreams", "quixstreams")}
LOG_APPEND_TIME = 1  # a record's timestamp_type when the broker stamped it
THROUGHPUT_SEED = 11
POLL_S = 0.05  # how often the bench looks at the output's end offsets and the system's CPU time
STALL_S = 90.0  # no new output for this long (start-up included): the system is stuck, stop waiting
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
Phases = tuple[tuple[float, float], tuple[float, float]]
OVERLOAD: Phases = ((1.5, 10.0), (0.5, 30.0))  # (share of the worker's drain maximum, seconds): a burst, then less
CAUGHT_UP_MS = 100  # the lag is back to 0 once no event appended this long ago or earlier is undecided
OVERLOAD_POOL = 50_000  # simulated events cycled (with new transaction ids) through the overload run


class BenchError(FraudMonitorError):
    """The bench could not set a run up (e.g. the pre-fill was not acknowledged)."""


@dataclass
class Throughput:
    """One system draining the pre-filled topic."""

    system: str
    events: int
    outputs: int  # records the system produced before it was stopped
    events_per_s: float  # outputs / (last - first output append time)
    first_to_last_s: float
    cpu_us_per_event: float | None  # utime + stime between the last look with no output and the last output
    peak_rss_mb: float | None
    degraded: int | None = None  # the worker's decisions taken without the model or the rule state
    exit_code: int | None = None  # when the process ended on its own

    @property
    def drained(self) -> bool:
        return self.outputs >= self.events


@dataclass
class Latency:
    """End-to-end latency of one system at one produced rate (broker append time in to broker append time out)."""

    system: str
    rate: int  # events/s asked of the producer
    label: str  # "fixed" or e.g. "80% of worker max"
    events: int
    joined: int  # events found on both topics
    achieved_rate: float  # input records / (last - first input append time)
    p50_ms: float | None  # None when no event came out
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    degraded: int | None = None  # the worker's decisions taken without the model or the rule state
    machine_busy: float | None = None  # share of all cores busy (every process) while the events were produced
    cpu_us_per_event: float | None = None  # the system's utime + stime from the first event sent to the last output


@dataclass
class Overload:
    """The worker, warm, under a burst above its drain maximum and then a rate below it (`OVERLOAD`)."""

    burst_share: float  # of the worker's drain maximum
    burst_rate: int  # events/s asked of the producer during the burst
    burst_s: float
    after_rate: int  # events/s asked after it
    after_s: float
    achieved_burst_rate: float  # burst records / (last - first burst input append time)
    events: int
    decided: int  # events with a decision when the run ended
    lost: int  # events without one (must be 0)
    degraded: int  # decisions taken without the model or the rule state (must be 0 while Redis is up)
    peak_lag: int  # the most events appended to the input and not yet decided at once (the broker's clock)
    recovery_s: float | None  # from the burst's last input to the lag back to 0; None: not within the run
    p99_ms: float | None  # end-to-end latency over the whole run
    max_ms: float | None


@dataclass
class Report:
    measured_at: str
    cpu_count: int | None
    broker: str
    broker_on_this_host: bool
    partitions: int
    events: int
    seconds: float
    versions: dict[str, str]
    load_generator: str
    host_reference_ms: list[float] = field(default_factory=list)  # `host_reference_ms()` at the start and the end
    throughput: list[Throughput] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    overload: Overload | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def depends_on(self) -> str:
        reference = " then ".join(f"{ms:.1f}" for ms in self.host_reference_ms) or "?"
        where = "on this host, sharing its cores" if self.broker_on_this_host else "on another host"
        return (f"{self.cpu_count} cores (os.cpu_count()) shared by the system under test, the load generator "
                f"({self.load_generator}) and Redis; the broker {self.broker} {where}; {self.events:,} events over "
                f"{self.partitions} partitions for throughput; {self.seconds:g} s per latency rate; LogAppendTime has "
                f"millisecond resolution; this host's speed: {reference} ms for the reference workload (lower is "
                "faster; runs whose reference differs are not comparable)")

    def to_dict(self) -> dict:
        data = asdict(self)
        for row in data["throughput"]:
            row["drained"] = row["outputs"] >= row["events"]
        data["depends_on"] = self.depends_on
        return data


# ---- topics, read back after a run ---------------------------------------------------------------------------


def create_log_append_topics(settings: Settings, names: list[str]) -> None:
    """Create topics whose records carry the broker's append time (`message.timestamp.type=LogAppendTime`)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers, request_timeout_ms=15000,
                             **settings.kafka.client_options())
    try:
        admin.create_topics([
            NewTopic(name, settings.topics.partitions, settings.topics.replication_factor,
                     topic_configs={"message.timestamp.type": "LogAppendTime"})
            for name in names
        ])
    finally:
        admin.close()


def delete_topics(settings: Settings, names: list[str]) -> None:
    """Delete the bench's topics; one that cannot be deleted is named on stderr, not raised."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers, **settings.kafka.client_options())
        try:
            admin.delete_topics(names)
        finally:
            admin.close()
    except KafkaError as exc:
        print(f"bench: could not delete topics {', '.join(names)} ({exc.__class__.__name__})", file=sys.stderr)


class TopicReader:
    """A consumer without a group: end offsets while a system runs, then the records with their timestamps."""

    def __init__(self, settings: Settings) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=50,
            max_poll_records=10000, **settings.kafka.client_options(),
        )

    def _partitions(self, topic: str) -> list[TopicPartition]:
        deadline = time.monotonic() + 10
        while not (partitions := self._consumer.partitions_for_topic(topic)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return [TopicPartition(topic, p) for p in sorted(partitions or ())]

    def end_offsets(self, topic: str) -> dict[TopicPartition, int]:
        return self._consumer.end_offsets(self._partitions(topic))

    def count(self, topic: str) -> int:
        """Records ever written to `topic` (the bench's topics start empty and are never compacted)."""
        return sum(self.end_offsets(topic).values())

    def read(self, topic: str, start: dict[TopicPartition, int] | None = None) -> list[tuple[int, bytes]]:
        """(append time in ms, value) of every record from `start` (default: the beginning) up to the current end
        offsets. Raises `BenchError` when no record came for `STALL_S` before the end."""
        start = start or {}
        todo = {tp: end for tp, end in self.end_offsets(topic).items() if end > start.get(tp, 0)}
        if not todo:
            return []
        self._consumer.assign(list(todo))
        for tp in todo:
            self._consumer.seek(tp, start.get(tp, 0))
        records: list[tuple[int, bytes]] = []
        last_record = time.monotonic()
        while todo:
            if time.monotonic() - last_record > STALL_S:
                raise BenchError(f"reading {topic} back stalled ({len(records):,} records read, "
                                 f"{sum(todo.values()):,} the end offsets left to reach)")
            for tp, batch in self._consumer.poll(timeout_ms=500).items():
                last_record = time.monotonic()
                for record in batch:
                    if record.offset >= todo.get(tp, 0):
                        continue
                    if record.timestamp_type != LOG_APPEND_TIME:
                        raise BenchError(f"topic {topic} does not carry the broker's append time")
                    records.append((record.timestamp, record.value))
                if self._consumer.position(tp) >= todo.get(tp, 0):
                    todo.pop(tp, None)
        self._consumer.assign([])
        return records

    def close(self) -> None:
        self._consumer.close()


# ---- systems under test --------------------------------------------------------------------------------------


def _group_members(pgid: int) -> list[str]:
    """The /proc directories of the processes in process group `pgid` (a system and the workers it started)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                members.append(str(stat.parent))
        except (OSError, IndexError, ValueError):
            continue
    return members


def machine_ticks() -> tuple[int, int] | None:
    """(busy, all) clock ticks of every core since boot, from /proc/stat; None where there is none."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(values) - values[3] - values[4], sum(values)  # idle and iowait are not busy


def machine_busy(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of all cores busy between two `machine_ticks`."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process group `pid` leads (all processes, all threads) from /proc/*/stat; None once
    it is gone."""
    total, found = 0.0, False
    for member in _group_members(pid):
        try:
            fields = Path(member, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total, found = total + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, True
    return total if found else None


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) summed over the process group `pid` leads, from /proc/*/status; None once it is
    gone."""
    total, found = 0, False
    for member in _group_members(pid):
        try:
            for line in Path(member, "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total, found = total + int(line.split()[1]), True
        except OSError:
            continue
    return round(total / 1024, 1) if found else None


class Running:
    """One system under test, as a process of its own, consuming `source` and producing to `output`. Creates the
    topics it writes to and adds their names to `create` (the run deletes them all afterwards)."""

    def __init__(self, settings: Settings, system: str, source: str, output: str, out_dir: Path,
                 create: list[str]) -> None:
        self.settings, self.system, self.output = settings, system, output
        self.group = f"bench-{system}-{uuid.uuid4().hex[:8]}"
        self.state_prefix: str | None = None
        self.log_path = out_dir / f"bench-{system}.log"
        if system in WORKERS:
            flagged, dead_letter = f"{output}-flagged", f"{output}-dlq"
            create_log_append_topics(settings, [output, flagged, dead_letter])
            create += [output, flagged, dead_letter, f"{self.group}-__assignor-__leader"]  # the last one is Faust's
            self.state_prefix = run_state_prefix(settings, "bench")
            self.process = start_worker(settings, self.log_path, {
                "FRAUDMON_TOPICS__TRANSACTIONS": source, "FRAUDMON_TOPICS__SCORES": output,
                "FRAUDMON_TOPICS__FLAGGED": flagged, "FRAUDMON_TOPICS__DEAD_LETTER": dead_letter,
                "FRAUDMON_WORKER__APP_ID": self.group, "FRAUDMON_METRICS_PORT": "0", "FRAUDMON_LOG_LEVEL": "WARNING",
                "FRAUDMON_REDIS__KEY_PREFIX": self.state_prefix,
            }, processes=WORKERS[system])
            return
        create_log_append_topics(settings, [output])
        create.append(output)
        if system == "faust":
            create.append(f"{self.group}-__assignor-__leader")  # Faust's own
        command = [sys.executable, "-m", "fraudmon.tools.bench_peers", system,
                   "--bootstrap", settings.kafka.bootstrap_servers, "--source", source, "--output", output,
                   "--group", self.group, "--max-batch", str(settings.worker.max_batch),
                   "--model", str(settings.resolve(settings.worker.model_path)),
                   "--fetch-max-bytes", str(settings.worker.fetch_max_bytes),
                   "--fetch-max-wait-ms", str(settings.worker.fetch_max_wait_ms)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=project_dir(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process)
        if self.state_prefix:
            delete_state(self.settings, self.state_prefix)
            self.state_prefix = None


def _wait_for_outputs(running: Running, reader: TopicReader, expected: int,
                      on_sample: Callable[[int], None] | None = None) -> int:
    """Wait until `running`'s output topic holds `expected` records, the process ends, or no new record came for
    `STALL_S`; return the count. `on_sample(count)` is called at each look."""
    count, last_count, last_progress = 0, -1, time.monotonic()
    while True:
        count = reader.count(running.output)
        if on_sample:
            on_sample(count)
        if count >= expected or running.process.poll() is not None:
            return count
        if count != last_count:
            last_count, last_progress = count, time.monotonic()
        elif time.monotonic() - last_progress > STALL_S:
            return count
        time.sleep(POLL_S)


def _wait_until_quiet(running: Running, reader: TopicReader, quiet_s: float = 3.0) -> None:
    """Wait until `running`'s output topic has had no new record for `quiet_s` (or the process ended)."""
    count, since = reader.count(running.output), time.monotonic()
    while time.monotonic() - since < quiet_s and running.process.poll() is None:
        time.sleep(POLL_S)
        if (now := reader.count(running.output)) != count:
            count, since = now, time.monotonic()


def _events(n: int, seed: int) -> list[Event]:
    from training.simulate import SimulationConfig, simulate

    events, _ = simulate(SimulationConfig(n_events=n, n_accounts=max(500, n // 3), start=datetime.now(UTC),
                                          duration=timedelta(seconds=max(1.0, n / 1000)), seed=seed))
    return events


def load_generator() -> str:
    """The producer the bench loads topics with: confluent-kafka (librdkafka, a few µs of CPU per record) when the
    `bench` extra is installed, else kafka-python (about 85 µs per record, most of a core at 10,000/s)."""
    return "confluent-kafka" if importlib.util.find_spec("confluent_kafka") else "kafka-python"


def _produce(settings: Settings, events: list[Event], topic: str, rate: float | None) -> None:
    """Send `events` (at `rate` per second, or as fast as possible), each stamped with its send time."""
    if load_generator() == "confluent-kafka":
        _produce_confluent(settings, events, topic, rate)
        return
    from fraudmon.tools.produce import produce_events

    summary = produce_events(settings, events, topic=topic, rate=rate, live_time=True, progress=False)
    if summary.undelivered:
        raise BenchError(f"Kafka did not acknowledge {summary.undelivered} of {summary.sent} events for {topic} "
                         f"({summary.first_error})")


def _produce_confluent(settings: Settings, events: list[Event], topic: str, rate: float | None) -> None:
    """`_produce` with librdkafka: event i is due at i / rate s; due events go out every millisecond or so, their
    `timestamp` the send time (account age kept), and every record must be acknowledged (acks=all)."""
    from confluent_kafka import Producer

    from fraudmon.core.events import event_to_dict, format_timestamp
    from fraudmon.tools.produce import stamp_live

    # Records wait up to 5 ms for a batch: the clock is the broker's append time, so this does not count in the
    # latency, and the broker gets a fifth of the requests (at 8,000 events/s the aiokafka passthrough's machine
    # went from 82% to 56% busy, and the worker's p99 from 173 to 76 ms, with 1 ms).
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "acks": "all", "linger.ms": 5,
                         "queue.buffering.max.messages": 1_000_000})
    failed: list[str] = []

    def delivered(error, _message) -> None:
        if error is not None:
            failed.append(str(error))

    rows = [(event.account_id.encode(), event_to_dict(event), event) for event in events]
    started, sent = time.perf_counter(), 0
    while sent < len(rows):
        due = len(rows) if not rate else min(len(rows), int((time.perf_counter() - started) * rate) + 1)
        if due <= sent:
            time.sleep(min(0.001, max(0.0, sent / rate - (time.perf_counter() - started))))
            continue
        now_ms = int(time.time() * 1000)
        now_text = format_timestamp(now_ms)
        for key, data, event in rows[sent:due]:
            stamp_live(data, event, now_ms, now_text)
            while True:
                try:
                    producer.produce(topic, orjson.dumps(data), key, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let librdkafka send, then try again
                    producer.poll(0.01)
        sent = due
        producer.poll(0)
    left = producer.flush(60)
    if left or failed:
        raise BenchError(f"Kafka did not acknowledge {left + len(failed)} of {len(rows)} events for {topic} "
                         f"({failed[0] if failed else 'timed out'})")


# ---- the runs ------------------------------------------------------------------------------------------------


def measure_throughput(running: Running, reader: TopicReader, events: int) -> Throughput:
    """Let `running` drain the pre-filled topic. Its CPU time is counted from the last look (every `POLL_S`) at
    which it had produced nothing to the last one, at which it had produced everything (start-up left out)."""
    pid = running.process.pid
    cpu_before: list[float | None] = [cpu_seconds(pid)]
    cpu_after: list[float | None] = [None]

    def sample(count: int) -> None:
        if count == 0:
            cpu_before[0] = cpu_seconds(pid)
        else:
            cpu_after[0] = cpu_seconds(pid)

    outputs = _wait_for_outputs(running, reader, events, sample)
    rss = peak_rss_mb(pid)
    records = reader.read(running.output)
    stamps = [stamp for stamp, _ in records]
    span_s = (max(stamps) - min(stamps)) / 1000 if stamps else 0.0
    cpu = None
    if cpu_before[0] is not None and cpu_after[0] is not None and outputs:
        cpu = round((cpu_after[0] - cpu_before[0]) / outputs * 1e6, 1)
    degraded = None
    if running.system in WORKERS:
        degraded = sum(1 for _, value in records if orjson.loads(value).get("degraded"))
    return Throughput(
        system=running.system, events=events, outputs=outputs,
        events_per_s=round(len(records) / max(span_s, 1e-3), 1) if len(records) > 1 else 0.0,
        first_to_last_s=round(span_s, 3), cpu_us_per_event=cpu, peak_rss_mb=rss, degraded=degraded,
        exit_code=running.process.poll(),
    )


def measure_latency(settings: Settings, running: Running, reader: TopicReader, source: str,
                    rates: list[tuple[int, str]], seconds: float, seed: int) -> list[Latency]:
    """Produce `rate x seconds` events at each rate into `source` (which `running` consumes), wait for their
    outputs, then join input and output append times by transaction id."""
    produced: list[tuple[int, str, list[Event], float | None, float | None]] = []
    expected = reader.count(running.output)
    for i, (rate, label) in enumerate(rates):
        events = _events(max(1, round(rate * seconds)), seed + i)
        before, cpu_before = machine_ticks(), cpu_seconds(running.process.pid)
        _produce(settings, events, source, rate)
        busy = machine_busy(before, machine_ticks())
        expected += len(events)
        _wait_for_outputs(running, reader, expected)
        cpu_after = cpu_seconds(running.process.pid)
        cpu = None if None in (cpu_before, cpu_after) else round((cpu_after - cpu_before) / len(events) * 1e6, 1)
        produced.append((rate, label, events, busy, cpu))
    inputs, _ = _append_times(reader.read(source))
    outputs, degraded = _append_times(reader.read(running.output))
    rows = []
    for rate, label, events, busy, cpu in produced:
        ids = [e.transaction_id for e in events if e.transaction_id in inputs]
        latencies = [float(outputs[tx] - inputs[tx]) for tx in ids if tx in outputs]
        stamps = [inputs[tx] for tx in ids]
        span_s = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else 0.0
        rows.append(Latency(
            system=running.system, rate=rate, label=label, events=len(events), joined=len(latencies),
            achieved_rate=round(len(stamps) / span_s, 1) if span_s else 0.0,
            **{f"p{q}_ms": percentile(latencies, q) if latencies else None for q in (50, 95, 99)},
            max_ms=max(latencies, default=None),
            degraded=sum(1 for tx in ids if tx in degraded) if running.system == "worker" else None,
            machine_busy=busy, cpu_us_per_event=cpu,
        ))
    return rows


def measure_overload(settings: Settings, running: Running, reader: TopicReader, source: str,
                     drain_per_s: float, phases: Phases = OVERLOAD) -> Overload:
    """Produce the two `phases` into `source` (which the warm worker `running` consumes), wait for the
    decisions, then read the lag off the broker's append times: at each moment, the events appended to the
    input and not yet decided."""
    (burst_share, burst_s), (after_share, after_s) = phases
    burst_rate, after_rate = round(drain_per_s * burst_share), max(1, round(drain_per_s * after_share))
    pool = _events(OVERLOAD_POOL, seed=300)
    total = round(burst_rate * burst_s) + round(after_rate * after_s)
    events = [replace(pool[i % len(pool)], transaction_id=f"{pool[i % len(pool)].transaction_id}-o{i // len(pool)}")
              for i in range(total)]
    burst = events[:round(burst_rate * burst_s)]
    source_start, output_start = reader.end_offsets(source), reader.end_offsets(running.output)
    expected = sum(output_start.values()) + len(events)
    _produce(settings, burst, source, burst_rate)
    _produce(settings, events[len(burst):], source, after_rate)
    _wait_for_outputs(running, reader, expected)
    _wait_until_quiet(running, reader)  # redeliveries count too: the last decisions may still be coming
    inputs, _ = _append_times(reader.read(source, source_start))
    outputs, degraded = _append_times(reader.read(running.output, output_start))
    ids = [e.transaction_id for e in events if e.transaction_id in inputs]
    latencies = [float(outputs[tx] - inputs[tx]) for tx in ids if tx in outputs]
    burst_times = sorted(inputs[e.transaction_id] for e in burst if e.transaction_id in inputs)
    lag, recovery_ms = lag_after(sorted(((inputs[tx], outputs.get(tx)) for tx in ids), key=itemgetter(0)),
                                 burst_times[-1])
    return Overload(
        burst_share=burst_share, burst_rate=burst_rate, burst_s=burst_s, after_rate=after_rate, after_s=after_s,
        achieved_burst_rate=round(len(burst_times) / max((burst_times[-1] - burst_times[0]) / 1000, 1e-3), 1),
        events=len(events), decided=len(latencies), lost=len(events) - len(latencies),
        degraded=sum(1 for tx in ids if tx in degraded), peak_lag=lag,
        recovery_s=None if recovery_ms is None else round(recovery_ms / 1000, 2),
        p99_ms=percentile(latencies, 99) if latencies else None, max_ms=max(latencies, default=None),
    )


def lag_after(times: list[tuple[int, int | None]], burst_end_ms: int) -> tuple[int, int | None]:
    """From (input, output) append times (ms; output None: never decided), sorted by input: the peak lag (events
    appended and not yet decided at once), and the ms from `burst_end_ms` until the lag is back to 0, i.e. no
    event appended `CAUGHT_UP_MS` or more before is undecided (None: never within the times given)."""
    ins = sorted(t for t, _ in times)
    outs = sorted(o for _, o in times if o is not None)
    peak = max((i + 1 - bisect_right(outs, t) for i, t in enumerate(ins)), default=0)
    latest_out, undecided_by = [], -1  # per event in input order: the latest output among it and those before
    for _, out in times:
        undecided_by = max(undecided_by, out if out is not None else 2**62)
        latest_out.append(undecided_by)
    end = max(max(outs, default=burst_end_ms), ins[-1] + CAUGHT_UP_MS if ins else burst_end_ms)
    for t in range(burst_end_ms, end + 10, 10):  # up to the last decision (inclusive)
        older = bisect_right(ins, t - CAUGHT_UP_MS)
        if older == 0 or latest_out[older - 1] <= t:
            return peak, t - burst_end_ms
    return peak, None


def _append_times(records: list[tuple[int, bytes]]) -> tuple[dict[str, int], set[str]]:
    """Each transaction id's first append time, and the ids of the decisions marked degraded."""
    times: dict[str, int] = {}
    degraded: set[str] = set()
    for stamp, value in records:
        record = orjson.loads(value)
        tx = record.get("transaction_id")
        if tx is not None:
            times.setdefault(tx, stamp)
            if record.get("degraded"):
                degraded.add(tx)
    return times, degraded


def missing(system: str, settings: Settings) -> str | None:
    """Why a system cannot run here, or None."""
    if system in PEER_NEEDS:
        module, package = PEER_NEEDS[system]
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install 'fraud-monitor[bench]')"
    if system not in WORKERS and settings.kafka.security_protocol != "PLAINTEXT":
        return "the peers connect in plaintext only"
    return None


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("faust-streaming", "aiokafka", "confluent-kafka", "quixstreams", "onnxruntime", "kafka-python"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def host_reference_ms(runs: int = 5) -> float:
    """This host's single-core speed for Python code like the worker's, as the best of `runs` timings of a fixed
    workload (JSON out and in, a dict, arithmetic) in ms. Cores shared with other tenants, or throttled, show
    here: figures from runs whose reference differs are not comparable."""
    record = {"transaction_id": "tx-1", "account_id": "acc-1", "amount": 12.5, "tags": ["a", "b", "c"], "n": 7}
    best = math.inf
    for _ in range(runs):
        started = time.perf_counter()
        total = 0
        for i in range(5_000):
            total += len(orjson.loads(orjson.dumps(record))) + sum(range(i % 50))
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 2)


def _on_this_host(bootstrap: str) -> bool:
    hosts = {part.rsplit(":", 1)[0].strip("[]") for part in bootstrap.split(",")}
    local = {"localhost", socket.gethostname()}
    return all(host in local or host.startswith("127.") or host == "::1" for host in hosts)


def run_bench(settings: Settings, *, events: int, rates: list[int], seconds: float, out_dir: Path,
              systems: list[str] | tuple[str, ...] = SYSTEMS, max_share: float = 0.8,
              overload: Phases | None = OVERLOAD) -> Report:
    """Pre-fill, throughput of each system in turn (the worker last), then latency at each rate (plus
    `max_share` of the worker's measured maximum, when it ran) for the worker and the aiokafka and faust
    passthroughs, then the worker's `overload` run (when it drained; None: none). Writes bench.json and bench.png
    to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"), cpu_count=os.cpu_count(),
        broker=settings.kafka.bootstrap_servers, broker_on_this_host=_on_this_host(settings.kafka.bootstrap_servers),
        partitions=settings.topics.partitions, events=events, seconds=seconds, versions=_versions(),
        load_generator=load_generator(), host_reference_ms=[host_reference_ms()],
    )
    report.skipped = {s: why for s in systems if (why := missing(s, settings))}
    order = [s for s in SYSTEMS if s in systems and s not in report.skipped and s != "worker"]
    order += ["worker"] if "worker" in systems else []
    for system in order:
        (out_dir / f"bench-{system}.log").unlink(missing_ok=True)
    run = uuid.uuid4().hex[:6]
    source = f"bench-{run}-in"
    topics = [source]
    reader = TopicReader(settings)
    running: dict[str, Running] = {}
    try:
        create_log_append_topics(settings, [source])
        _produce(settings, _events(events, THROUGHPUT_SEED), source, None)
        for system in order:
            current = running[system] = Running(settings, system, source, f"bench-{run}-{system}", out_dir,
                                                create=topics)
            row = measure_throughput(current, reader, events)
            report.throughput.append(row)
            if not row.drained:
                print(f"bench: {system} produced {row.outputs} of {events} outputs; the end of its log "
                      f"({current.log_path}):\n{current.log_tail()}", file=sys.stderr)
            if system != "worker" or not row.drained:
                current.stop()
        latency_rates = [(rate, "fixed") for rate in rates]
        worker = next((row for row in report.throughput if row.system == "worker" and row.drained), None)
        if worker and max_share > 0:
            latency_rates.append((max(1, round(worker.events_per_s * max_share)), f"{max_share:.0%} of worker max"))
        latency_rates.sort()
        for index, system in enumerate(LATENCY_SYSTEMS):
            if system == "worker" and worker:  # warm and idle after its drain: no second start-up
                current, latency_source = running["worker"], source
            elif system in order and system != "worker":
                latency_source = f"bench-{run}-lat-{system}-in"
                create_log_append_topics(settings, [latency_source])
                topics.append(latency_source)
                current = running[f"{system}-latency"] = Running(
                    settings, system, latency_source, f"bench-{run}-lat-{system}", out_dir, create=topics)
                wait_for_group(settings, current.group, timeout_s=60)
            else:
                continue
            report.latency += measure_latency(settings, current, reader, latency_source, latency_rates, seconds,
                                              seed=100 + 10 * index)
            if system == "worker" and worker and overload:
                report.overload = measure_overload(settings, current, reader, latency_source, worker.events_per_s,
                                                   overload)
            current.stop()
    finally:
        for current in running.values():
            current.stop()
        reader.close()
        delete_topics(settings, topics)
    report.host_reference_ms.append(host_reference_ms())
    (out_dir / "bench.json").write_text(json.dumps(report.to_dict(), indent=2))
    plot(report, out_dir / "bench.png")
    return report


# ---- output --------------------------------------------------------------------------------------------------


def plot(report: Report, path: Path) -> None:
    """Latency percentiles by rate per system (left) and throughput per system (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for color, system in enumerate(dict.fromkeys(row.system for row in report.latency)):
        rows = [row for row in report.latency if row.system == system]
        for q, style in (("p50", "-o"), ("p95", "--s"), ("p99", ":^")):
            left.plot([r.rate for r in rows], [getattr(r, f"{q}_ms") for r in rows], style, color=f"C{color}",
                      label=f"{system} {q}")
    left.set_xlabel("produced events/s")
    left.set_ylabel("end-to-end latency, broker to broker (ms), log scale")
    left.set_title("latency at fixed rates")
    names = [row.system for row in report.throughput]
    bars = right.bar(names, [row.events_per_s for row in report.throughput], color="tab:blue")
    right.bar_label(bars, labels=[f"{row.events_per_s:,.0f}" for row in report.throughput], fontsize=8)
    right.set_ylabel("events/s (first to last output), log scale")
    right.set_title(f"throughput, {report.events:,} pre-filled events")
    positive = [row.events_per_s for row in report.throughput if row.events_per_s > 0]
    if positive:  # bars from the power of ten below the slowest system
        right.set_ylim(bottom=10 ** math.floor(math.log10(min(positive))), top=max(positive) * 1.5)
    for axis, shown in ((left, any(row.max_ms for row in report.latency)), (right, positive)):
        if shown:
            axis.set_yscale("log")
            axis.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,g}"))
            axis.yaxis.set_minor_formatter(ticker.NullFormatter())
    if report.latency:
        left.legend(fontsize=8)
    fig.suptitle(f"fraudmon bench {report.measured_at}: {report.cpu_count} cores, broker {report.broker}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_lines(report: Report) -> list[str]:
    """The tables, as Markdown (readable in a terminal, pasteable into the README)."""
    base = next((row.events_per_s for row in report.throughput if row.system == "aiokafka"), None)
    lines = ["throughput (pre-filled topic; records / (last - first output append time))", "",
             "| system | events/s | vs aiokafka | drained | degraded | CPU µs/event | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in report.throughput:
        ratio = f"{row.events_per_s / base:.2f}" if base else "-"
        lines.append(f"| {row.system} | {row.events_per_s:,.0f} | {ratio} | {row.outputs:,}/{row.events:,} | "
                     f"{_cell(row.degraded)} | {_cell(row.cpu_us_per_event)} | {_cell(row.peak_rss_mb)} |")
    drains = {row.system: row.events_per_s for row in report.throughput if row.drained}
    if drains.get("worker") and drains.get("quix"):
        lines += ["", f"the worker drains {drains['worker'] / drains['quix']:.1f}x the Quix Streams peer"]
    lines += ["", "end-to-end latency (output append time - input append time, ms)", "",
              "| system | rate | achieved | p50 | p95 | p99 | max | joined | degraded | CPU µs/event | machine busy |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report.latency:
        rate = f"{row.rate:,}" + ("" if row.label == "fixed" else f" ({row.label})")
        ms = " | ".join(_cell(v) for v in (row.p50_ms, row.p95_ms, row.p99_ms, row.max_ms))
        busy = "-" if row.machine_busy is None else f"{row.machine_busy:.0%}"
        lines.append(f"| {row.system} | {rate} | {row.achieved_rate:,.0f} | {ms} | {row.joined:,}/{row.events:,} "
                     f"| {_cell(row.degraded)} | {_cell(row.cpu_us_per_event)} | {busy} |")
    if report.overload:
        o = report.overload
        recovery = "not within the run" if o.recovery_s is None else f"{o.recovery_s:g}"
        lines += ["", f"overload (the worker: {o.burst_rate:,}/s for {o.burst_s:g} s, {o.burst_share:.0%} of its drain "
                      f"maximum, then {o.after_rate:,}/s for {o.after_s:g} s; lag in events, by the broker's clock)",
                  "", "| achieved burst/s | events | decided | lost | degraded | peak lag | lag back to 0 after, s | "
                      "p99 ms | max ms |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {o.achieved_burst_rate:,.0f} | {o.events:,} | {o.decided:,} | {o.lost:,} | {o.degraded:,} | "
                  f"{o.peak_lag:,} | {recovery} | {_cell(o.p99_ms)} | {_cell(o.max_ms)} |"]
    lines += [f"skipped {system}: {why}" for system, why in report.skipped.items()]
    lines += ["", f"depends on: {report.depends_on}"]
    return lines


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_report(report: Report) -> None:
    print("\n" + "\n".join(report_lines(report)))
    print("\nbench: the local stack it ran on is left running for the next run (`fraudmon stack down` stops it)")
