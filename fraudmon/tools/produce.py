"""`fraudmon produce`: send transaction events to Kafka at a steady rate, from the simulator or a file.

Files (events as JSON lines or CSV, the card-holder CSV `Time,V1..V28,Amount,Class`, or any numeric feature
table with `--format table --label-column COL`, whose labels go to a ground-truth file) are read and validated
completely by `fraudmon.core.eventfiles` before the first message is sent.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fraudmon.core.config import Settings
from fraudmon.core.errors import ProduceError
from fraudmon.core.events import Event, event_to_dict, format_timestamp

MAX_CHUNK = 1_000  # events sent between two looks at the clock, the stop flag and the progress bar
DEFAULT_DELIVERY_TIMEOUT_S = 120.0  # how long Kafka may take to acknowledge a message before it counts as undelivered
STALL_AFTER_S = 5.0  # no acknowledgement for this long while messages wait (or a blocked send): warn
WARN_EVERY_S = 10.0  # at most one stall warning this often
LINGER_MS = 5


@dataclass(frozen=True)
class ProduceSummary:
    """What a produce run did. `delivered` counts broker acknowledgements and `failed` the errors Kafka reported,
    malformed messages included; `delivered_ids` are the acknowledged transaction ids (for the truth file)."""

    topic: str
    sent: int  # events handed to the producer
    delivered: int
    failed: int
    malformed: int
    elapsed_s: float  # sending, from the first message to the last (the pacing window)
    wait_s: float  # waiting for the outstanding acknowledgements afterwards
    delivery_timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S
    interrupted: bool = False
    first_error: str | None = None
    delivered_ids: frozenset[str] = field(default=frozenset(), repr=False)

    @property
    def rate(self) -> float:
        """Achieved events per second over the sending window."""
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def undelivered(self) -> int:
        """Messages (events and malformed) Kafka did not acknowledge: refused, failed, or given up on."""
        return self.sent + self.malformed - self.delivered

    def lines(self) -> list[str]:
        """The closing summary, one fact per line."""
        lines = [
            f"topic        {self.topic}",
            f"sent         {self.sent} events" + (f" + {self.malformed} malformed" if self.malformed else ""),
            f"delivered    {self.delivered}",
            f"undelivered  {self.undelivered}" + (f" (first error: {self.first_error})" if self.first_error else ""),
            f"elapsed      {self.elapsed_s:.2f} s sending + {self.wait_s:.2f} s waiting for acknowledgements "
            f"(at most {self.delivery_timeout_s:g} s, --delivery-timeout)",
            f"rate         {self.rate:,.0f} events/s",
        ]
        if self.interrupted:
            lines.append("stopped early on request")
        return lines


# ---------------------------------------------------------------------------------------------------- sending


def malformed_messages(n: int) -> list[tuple[bytes, bytes]]:
    """`n` (key, value) messages the worker must dead-letter: one of each kind in turn."""
    now = format_timestamp(time.time() * 1000)
    kinds = [
        lambda k: b"{not json: " + k.encode(),
        lambda k: json.dumps({"transaction_id": k, "account_id": "acc-malformed", "timestamp": now}).encode(),
        lambda k: (f'{{"transaction_id":"{k}","account_id":"acc-malformed","amount":NaN,'
                   f'"timestamp":"{now}"}}').encode(),
        lambda k: json.dumps({"transaction_id": k, "account_id": "acc-malformed", "amount": 10.0,
                              "timestamp": "yesterday at noon"}).encode(),
        lambda k: b"[1, 2, 3]",
        lambda k: b"\xff\xfe binary " + k.encode(),
    ]
    return [(f"malformed-{i}".encode(), kinds[i % len(kinds)](f"malformed-{i}")) for i in range(n)]


class Deliveries:
    """What became of each message handed to the producer: acknowledged (with its transaction id) or failed.
    The callbacks run on the producer's I/O thread; `handed` and `sending_since` are the sending thread's."""

    def __init__(self) -> None:
        self.handed = 0
        self.delivered = 0
        self.failed = 0
        self.first_error: str | None = None
        self.ids: set[str] = set()
        self.sending_since: float | None = None  # monotonic start of the send() batch in progress
        self._lock = threading.Lock()

    @property
    def outstanding(self) -> int:
        """Messages handed over whose fate Kafka has not reported yet."""
        return max(0, self.handed - self.delivered - self.failed)

    def ok(self, transaction_id: str | None, _metadata: Any) -> None:
        with self._lock:
            self.delivered += 1
            if transaction_id is not None:
                self.ids.add(transaction_id)

    def error(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if self.first_error is None:
                text, name = str(exc), exc.__class__.__name__
                self.first_error = text if text.startswith(name) else f"{name}: {text}"

    def wait(self, deadline: float) -> None:
        """Until nothing is outstanding or the monotonic `deadline`."""
        while self.outstanding and time.monotonic() < deadline:
            time.sleep(0.05)


class StallWatch:
    """Warns when deliveries stall: nothing acknowledged for `stall_after` seconds while messages wait, or a
    send() blocked that long. One line at most every `every` seconds, so an outage is reported, not flooded."""

    def __init__(self, deliveries: Deliveries, bootstrap: str, delivery_timeout_s: float,
                 warn: Callable[[str], None], *, stall_after: float = STALL_AFTER_S, every: float = WARN_EVERY_S,
                 now: float | None = None) -> None:
        self.deliveries = deliveries
        self.bootstrap = bootstrap
        self.delivery_timeout_s = delivery_timeout_s
        self.warn = warn
        self.stall_after = stall_after
        self.every = every
        self._acked = 0
        self._progress_at = time.monotonic() if now is None else now
        self._warned_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="produce-stall-watch", daemon=True)

    def check(self, now: float) -> str | None:
        """The warning due at monotonic time `now`, if any."""
        d = self.deliveries
        waiting = d.outstanding
        if not waiting or d.delivered != self._acked:
            self._acked, self._progress_at = d.delivered, now
        stalled = now - self._progress_at
        blocked = now - d.sending_since if d.sending_since is not None else 0.0
        if max(stalled, blocked) < self.stall_after:
            return None
        if self._warned_at is not None and now - self._warned_at < self.every:
            return None
        self._warned_at = now
        what = f"send() blocked for {blocked:.0f} s" if blocked >= self.stall_after else \
            f"nothing acknowledged for {stalled:.0f} s"
        return (f"warning: Kafka at {self.bootstrap}: {what}, {waiting:,} messages waiting; still trying, messages "
                f"not acknowledged within {self.delivery_timeout_s:g} s (--delivery-timeout) count as undelivered")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            message = self.check(time.monotonic())
            if message:
                self.warn(message)


def make_producer(settings: Settings, compression: str | None = None,
                  delivery_timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S) -> KafkaProducer:
    """An idempotent producer (acks=all) on the configured brokers, with their security options. A message not
    acknowledged within `delivery_timeout_s` fails (its errback gets a KafkaTimeoutError), so no wait is endless."""
    kafka = settings.kafka
    timeout_ms = max(1_000, round(delivery_timeout_s * 1000))
    try:
        return KafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers.split(","), acks="all", enable_idempotence=True,
            linger_ms=LINGER_MS, batch_size=128 * 1024, compression_type=compression,
            delivery_timeout_ms=timeout_ms, request_timeout_ms=min(30_000, timeout_ms - LINGER_MS),
            max_block_ms=min(15_000, timeout_ms), bootstrap_timeout_ms=10_000, client_id="fraudmon-produce",
            reconnect_backoff_max_ms=1_000,  # kafka-python's 30 s would miss a broker back after a restart
            **kafka.client_options(),
        )
    except KafkaError as exc:  # KafkaTimeoutError or NoBrokersAvailable: nothing answered at the address
        raise ProduceError(f"no Kafka broker answers at {kafka.bootstrap_servers} ({exc.__class__.__name__}): "
                           "start the stack (`fraudmon stack up`) or pass --bootstrap host:port") from None
    except (ValueError, RuntimeError) as exc:  # unknown codec, or its library is not installed
        raise ProduceError(f"compression {compression!r} is not available ({exc}); use gzip or none") from None


def _close_producer(producer: KafkaProducer, *, abandon: bool) -> None:
    """Close the producer; with `abandon`, fail the messages it still holds at once instead of waiting for them.
    kafka-python's close() flushes first and raises when that times out, which would leave its I/O thread
    running (and a traceback at exit), hence the forced close of its sender."""
    try:
        if abandon:
            producer._sender.force_close()
        producer.close(timeout=5)
    except KafkaError:
        pass  # nothing left to deliver or to tell: the summary already counts every message not acknowledged


def _print_warning(console: Console) -> Callable[[str], None]:
    return lambda message: console.print(message, style="yellow", markup=False, highlight=False, soft_wrap=True)


def stamp_live(data: dict, event: Event, now_ms: int, now_text: str) -> None:
    """Make `data` (the JSON form of `event`) happen now: its timestamp, and its account creation time moved with
    it (account age kept)."""
    data["timestamp"] = now_text
    if event.account_created_ms is not None:
        data["account_created_at"] = format_timestamp(event.account_created_ms + now_ms - event.timestamp_ms)


def produce_events(
    settings: Settings,
    events: Iterable[Event],
    *,
    topic: str | None = None,
    rate: float | None = None,
    count: int | None = None,
    duration: float | None = None,
    live_time: bool = True,
    malformed: int = 0,
    progress: bool = False,
    total: int | None = None,
    compression: str | None = None,
    stop: threading.Event | None = None,
    delivery_timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S,
    warn: Callable[[str], None] | None = None,
) -> ProduceSummary:
    """Send `events` to `topic` (default: the transactions topic), keyed by account, and wait for the acks.

    `rate` events/s is kept on a schedule (event i is due at i/rate s) and sent in chunks, so the achieved rate
    holds at thousands per second; None or 0 sends as fast as possible. The run ends when the events run out,
    after `count` events, or after `duration` seconds (with a rate: exactly rate x duration events). With
    `live_time` each event's timestamp becomes its send time (its account creation time moves with it, so
    account age is kept). `malformed` extra bad messages are spread through the run; `total` (the number of
    events, when `events` has no len) sizes the progress bar and that spread. `stop` ends the run early.

    Kafka going away mid-run does not end the run: messages wait in the producer, `warn` (default: stderr) says
    so every few seconds, and those not acknowledged within `delivery_timeout_s` count as undelivered. After the
    last send it waits at most that long for the outstanding acknowledgements (Ctrl-C stops sending, a second one
    stops waiting). The summary always comes back; only a broker or topic missing at the start raises.
    """
    topic = topic or settings.topics.transactions
    rate = rate or None
    limit = count
    if rate and duration:
        limit = round(rate * duration) if limit is None else min(limit, round(rate * duration))
    if total is None and hasattr(events, "__len__"):
        total = len(events)
    expected = min(x for x in (limit, total) if x is not None) if (limit or total) else None
    bad = malformed_messages(malformed)
    bad_at = [(k + 1) * expected // (malformed + 1) if expected else 0 for k in range(malformed)]

    producer = make_producer(settings, compression, delivery_timeout_s)
    try:
        producer.partitions_for(topic)
    except KafkaError as exc:
        _close_producer(producer, abandon=True)
        raise ProduceError(f"topic {topic!r} is not available on {settings.kafka.bootstrap_servers} "
                           f"({exc.__class__.__name__}): create it (`fraudmon stack up` creates the "
                           "configured topics) or pass --topic") from None
    console = Console(stderr=True)
    warn = warn or _print_warning(console)
    deliveries = Deliveries()
    ok, error, send = deliveries.ok, deliveries.error, producer.send
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    source = iter(events)
    sent = bad_sent = 0
    interrupted = exhausted = False

    def hand_over(value: bytes, key: bytes, transaction_id: str | None) -> None:
        try:
            future = send(topic, value=value, key=key)
        except KafkaError as exc:  # refused at once (e.g. no metadata within max_block_ms): counts as failed
            deliveries.handed += 1
            error(exc)
            raise
        deliveries.handed += 1
        future.add_callback(ok, transaction_id).add_errback(error)

    def send_bad(until: float) -> None:
        nonlocal bad_sent
        while bad_sent < len(bad) and bad_at[bad_sent] <= until:
            key, value = bad[bad_sent]
            bad_sent += 1
            hand_over(value, key, None)

    watch = StallWatch(deliveries, settings.kafka.bootstrap_servers, delivery_timeout_s, warn)
    columns = (TextColumn("producing to {task.fields[topic]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[speed]}"), TimeElapsedColumn())
    watch.start()
    started = time.perf_counter()
    elapsed = 0.0
    try:
        try:
            with Progress(*columns, console=console, disable=not progress) as bar:
                task = bar.add_task("produce", total=expected, topic=topic, speed="")
                started = time.perf_counter()
                while not exhausted and (limit is None or sent < limit):
                    elapsed = time.perf_counter() - started
                    if stop is not None and stop.is_set():
                        interrupted = True
                        break
                    if duration and not rate and elapsed >= duration:
                        break
                    due = sent + MAX_CHUNK
                    if rate:
                        due = min(due, int(elapsed * rate) + 1)
                        if due <= sent:
                            time.sleep(sent / rate - elapsed)
                            continue
                    if limit is not None:
                        due = min(due, limit)
                    now_ms = int(time.time() * 1000)
                    now_text = format_timestamp(now_ms)
                    before = sent
                    deliveries.sending_since = time.monotonic()
                    while sent < due:
                        try:
                            event = next(source)
                        except StopIteration:
                            exhausted = True
                            break
                        data = event_to_dict(event)
                        if live_time:
                            stamp_live(data, event, now_ms, now_text)
                        sent += 1
                        hand_over(dumps(data).encode(), event.account_id.encode(), event.transaction_id)
                        send_bad(sent)
                    deliveries.sending_since = None
                    bar.update(task, advance=sent - before, speed=f"{sent / max(elapsed, 1e-3):,.0f}/s")
                send_bad(math.inf)
        except KeyboardInterrupt:
            interrupted = True
        except KafkaError:
            pass  # hand_over counted it as failed: stop sending, wait for the rest, report
        deliveries.sending_since = None
        elapsed = time.perf_counter() - started
        try:
            if interrupted and deliveries.outstanding:
                warn(f"stopping: waiting up to {delivery_timeout_s:g} s for {deliveries.outstanding:,} outstanding "
                     "acknowledgements (Ctrl-C again to stop waiting)")
            # Kafka fails a message after delivery_timeout_s on its own, but not while an idempotent producer
            # waits to re-register with a broker that is down: this deadline bounds that case too.
            deliveries.wait(time.monotonic() + delivery_timeout_s)
        except KeyboardInterrupt:
            interrupted = True
    finally:
        waited = time.perf_counter() - started - elapsed
        watch.stop()
        first_error = deliveries.first_error
        abandon = deliveries.outstanding > 0
        _close_producer(producer, abandon=abandon)
    if abandon and first_error is None:
        first_error = "stopped before Kafka acknowledged them" if interrupted else \
            f"not acknowledged within {delivery_timeout_s:g} s"
    return ProduceSummary(
        topic=topic, sent=sent, delivered=deliveries.delivered, failed=deliveries.failed, malformed=bad_sent,
        elapsed_s=elapsed, wait_s=waited, delivery_timeout_s=delivery_timeout_s,
        interrupted=interrupted, first_error=first_error, delivered_ids=frozenset(deliveries.ids),
    )
