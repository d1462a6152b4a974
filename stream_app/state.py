"""Declared aggregates' state (stream_app/aggregates.py), kept in Redis (or in process for replay).

`observe(aggregates, events)` judges a whole batch in one round trip: for each event, in order, it returns the
aggregates' values *before* that event (a tuple in declaration order: int, float, bool; durations int ms) and
then records the event, or a `StateFailure` for an event whose state could not be read or written (one bad key
never fails the others). It is idempotent per transaction id and content: an event seen before is not recorded
again and gets the values it was first judged against, so a redelivery after a crash is judged the same and
counted once (when the declarations changed meanwhile, it gets the values now, still not recorded again). The
same id with other content is a new event. Every key has a TTL.

Redis keys (prefix from config, default `fm:`). Every key of one entity (the events sharing a value of a `by`
field) carries the entity as a Redis Cluster hash tag, `{<field>:<value>}`, so all of them hash to one slot:
  {<by>:<value>}:h<ttl_ms>   hash: the entity's history aggregates with that ttl, in shared fields: n (events),
                             m and q (Welford's mean and m2 of the amount), s (sum), f and l (first and last event
                             time), #<code> (how many distinct values of a field), <code>:<value> (a value seen;
                             codes in OF_CODES, e.g. c:DE); TTL the ttl
  {<by>:<value>}:e           sorted set tx|fingerprint[=amount] -> event time: the windowed count, sum, mean, std,
                             first_seen_age and since_last; TTL the longest of those windows
  {<by>:<value>}:d:<code>    sorted set value -> the last event time it came with: the windowed count_distinct and
                             seen of one field; TTL the longest of those windows
  {transaction_id:<tx>}:dd   the dedupe record: fingerprint, plan id and the values the event was judged against
                             (a string); once the id comes with other content, a hash fingerprint -> plan id and
                             values. A `count` by transaction_id with a ttl is the number of contents it holds (at
                             most MAX_ID_VARIANTS), which costs no key of its own; TTL the longest of `dedupe_ttl`
                             and those counts' ttls
So one entity's history is one HMGET and one HSET per event (per distinct ttl), and the shipped rules touch the
keys of three entities per event (account_id, ip, transaction_id) with the commands the hand-written script
used. Keys live at least their TTL after each event that touched them, and at most an eighth (or an hour)
longer: the script pushes an expiry out only once less than the TTL is left.

Redis Cluster, later. On one Redis the whole batch is one script call (KEYS empty: the script builds the key
names), atomic per event, and one connection keeps the calls in order. A cluster runs a script only over keys of
one slot, named in KEYS, so the caller will split each batch by slot: for every event, the entities it has a
`by` value for, grouped by the CRC16 slot of their hash tag (the text between the braces); one script call per
slot (per node, pipelined, in batch order, so each entity's events are still recorded in order) with that slot's
keys in KEYS and the plan restricted to the groups of those entities; the values merged back by declaration
position (the plan's groups already say which aggregate each key answers). Idempotence then holds per part:
the dedupe record moves from one per event to one per (entity, event), `{<by>:<value>}:dd:<tx>` holding that
part's fingerprint and values, in the entity's slot (one more key write per entity and event, which one node
does not pay); the transaction's own part, with the counts by transaction_id, keeps `{transaction_id:<tx>}:dd`.
A batch whose parts partly fail (a node down) is then retried part by part, each part answering from its record.

The in-process store keeps the same state in dictionaries and computes the same values (the same float
operations in the same order; Redis keeps floats as 17 significant digits, which read back exactly). Its
history expires by event time (`ttl` after the entity's last event), where Redis' keys expire by the clock.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import chain
from operator import attrgetter
from typing import Any, Protocol

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fraudmon.core.config import Settings
from fraudmon.core.errors import StateUnavailable
from fraudmon.core.events import Event
from stream_app.aggregates import Aggregate, aggregate_type

MAX_ID_VARIANTS = 16  # as MAX_VARIANTS in lua/aggregates.lua
TRIM_EVERY = 8  # as in lua/aggregates.lua: windows are trimmed on events whose time is a multiple of this
AGGREGATES_LUA = resources.files("stream_app").joinpath("lua/aggregates.lua").read_text()
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StateFailure:
    """The state of one event could not be read or written (for example a corrupt key); says why."""

    reason: str


Values = tuple[int | float | bool, ...]
StateResult = Values | StateFailure


class PendingState(Protocol):
    """An `observe` sent to the store and not read yet."""

    def result(self) -> list[StateResult]:
        """The answer, as `observe` returns it (after the answers of the calls sent before); raises as it does."""
        ...

    def cancel(self) -> None:
        """Drop the answer (the call itself ran or runs), keeping the calls sent after it in step."""
        ...


class StateStore(Protocol):
    def connect(self) -> None:
        """Check the store answers and prepare it; raises `StateUnavailable`."""
        ...

    def observe(self, aggregates: Sequence[Aggregate], events: Sequence[Event]) -> list[StateResult]:
        """The aggregates' values before each event (in order), recording each event once. Waits for a busy store;
        raises `StateUnavailable` when it is down (refused, dropped, or no answer within its patience)."""
        ...

    def observe_later(self, aggregates: Sequence[Aggregate], events: Sequence[Event]) -> PendingState:
        """`observe`, sent now and read by `result()`: the store works while the caller does other work. Calls
        are run in the order sent. Raises `StateUnavailable` when it cannot be sent."""
        ...

    def remember(self, decisions: Sequence[tuple[str, str]]) -> None:
        """Keep `(transaction_id, decision)` pairs for the verdict window. Raises `StateUnavailable`."""
        ...

    def recall(self, transaction_id: str) -> str | None:
        """The decision on a transaction within the verdict window, or None. Raises `StateUnavailable`."""
        ...


DECISION_BUCKET_S = 3600  # decisions are kept in one hash per hour of deciding


def fingerprint(event: Event) -> str:
    """What tells a redelivery (same content) from a reused transaction id (other content)."""
    content = (event.account_id, event.amount, event.timestamp_ms, event.country, event.ip, event.counterparty_id,
               event.merchant_id, event.merchant_category, event.channel, event.device_id, event.currency)
    return hashlib.blake2b(orjson.dumps(content), digest_size=8).hexdigest()


# The plan: the declarations grouped by the keys that hold them (one group per key kind and entity field).
KIND_CODES = {"count": 1, "sum": 2, "mean": 3, "std": 4, "count_distinct": 5, "seen": 6, "first_seen_age": 7,
              "since_last": 8}  # as in lua/aggregates.lua
STAT_FIELDS = {"count": ("n",), "mean": ("n", "k", "m", "q"), "std": ("n", "k", "m", "q"), "sum": ("s",),
               "first_seen_age": ("f",), "since_last": ("l",)}
STAT_ORDER = ("n", "k", "m", "q", "s", "f", "l")
OF_CODES = {"account_id": "a", "ip": "i", "device_id": "d", "merchant_id": "mi", "counterparty_id": "p",
            "transaction_id": "t", "country": "c", "channel": "ch", "currency": "cu", "merchant_category": "mc"}
"""Short names of the fields in hash fields and key names: <code>:<value> marks a value seen, #<code> counts them."""


@dataclass(frozen=True)
class _HashGroup:
    """History aggregates of one `by` field and ttl: one hash per entity."""

    by: str
    ttl_ms: int
    stats: tuple[str, ...]  # statistic fields read and written (STAT_ORDER, then #<of code>)
    ofs: tuple[tuple[str, bool], ...]  # (of, whether its distinct values are counted), for seen / count_distinct
    aggs: tuple[tuple[int, str, int], ...]  # (position, kind, index in ofs or -1)


@dataclass(frozen=True)
class _StreamGroup:
    """Windowed count, sum, mean, std, first_seen_age and since_last of one `by` field: the entity's events."""

    by: str
    keep_ms: int  # the longest window
    amounts: bool  # sum, mean or std: the members carry the amount
    aggs: tuple[tuple[int, str, int], ...]  # (position, kind, window)


@dataclass(frozen=True)
class _DistinctGroup:
    """Windowed count_distinct and seen of one `by` and `of`: the entity's values by last time seen."""

    by: str
    of: str
    keep_ms: int
    aggs: tuple[tuple[int, str, int], ...]  # (position, kind, window)


@dataclass(frozen=True)
class _Plan:
    aggregates: tuple[Aggregate, ...]
    fields: tuple[str, ...]  # the string fields an event row carries after tx, fingerprint, time, amount
    hashes: tuple[_HashGroup, ...]
    streams: tuple[_StreamGroup, ...]
    distincts: tuple[_DistinctGroup, ...]
    tx_counts: tuple[int, ...]  # positions of the counts by transaction_id kept in the dedupe record
    tx_count_ttl_ms: int  # the longest of their ttls (0: none)
    defaults: Values
    doubles: tuple[int, ...]  # positions of double values (the script may write 0 for 0.0)
    text: bytes  # the plan as the script reads it
    id: str  # tells snapshots judged under other declarations apart
    field_values: Callable[[Event], tuple]

    def row(self, event: Event) -> tuple:
        """The event as the script reads it: tx, fingerprint, time, amount, then `fields` ('' when absent)."""
        return (event.transaction_id, fingerprint(event), event.timestamp_ms, event.amount,
                *[value or "" for value in self.field_values(event)])


_LAST_PLAN: tuple[Any, Any] = (None, None)  # the last declarations asked for (the same object batch after batch)


def plan_for(aggregates: Sequence[Aggregate]) -> _Plan:
    """How the declarations are kept: the groups, and the plan text the script reads. Cached; the rule set's
    declarations (the same tuple every batch) are found without hashing them."""
    global _LAST_PLAN
    last, plan = _LAST_PLAN
    if aggregates is not last:
        plan = _plan(tuple(aggregates))
        _LAST_PLAN = (aggregates, plan)
    return plan


@lru_cache(maxsize=16)
def _plan(aggregates: tuple[Aggregate, ...]) -> _Plan:
    fields: list[str] = []

    def use(name: str) -> int:  # the field's index in the script's row (Lua counts from 1)
        if name not in fields:
            fields.append(name)
        return 5 + fields.index(name)

    folded = {(a.by, a.ttl_ms) for a in aggregates if a.by == "transaction_id" and a.ttl_ms is not None}
    folded -= {(a.by, a.ttl_ms) for a in aggregates if a.by == "transaction_id" and a.kind != "count"}
    tx_counts: list[int] = []
    hashes: dict[tuple[str, int], dict] = {}
    streams: dict[str, dict] = {}
    distincts: dict[tuple[str, str], dict] = {}
    for position, agg in enumerate(aggregates):
        if (agg.by, agg.ttl_ms) in folded:  # kept in the dedupe record: see lua/aggregates.lua
            tx_counts.append(position)
            continue
        use(agg.by)
        if agg.of is not None and agg.of != "amount":
            use(agg.of)
        if agg.ttl_ms is not None:
            group = hashes.setdefault((agg.by, agg.ttl_ms), {"stats": set(), "ofs": {}, "aggs": []})
            group["stats"].update(STAT_FIELDS.get(agg.kind, ()))
            if agg.kind == "count_distinct":
                group["ofs"][agg.of] = True
                group["stats"].add(f"#{OF_CODES[agg.of]}")
            elif agg.kind == "seen":
                group["ofs"].setdefault(agg.of, False)
            group["aggs"].append((position, agg.kind, agg.of))
        elif agg.kind in ("count_distinct", "seen"):
            group = distincts.setdefault((agg.by, agg.of), {"keep": 0, "aggs": []})
            group["keep"] = max(group["keep"], agg.window_ms)
            group["aggs"].append((position, agg.kind, agg.window_ms))
        else:
            group = streams.setdefault(agg.by, {"keep": 0, "amounts": False, "aggs": []})
            group["keep"] = max(group["keep"], agg.window_ms)
            group["amounts"] |= agg.kind in ("sum", "mean", "std")
            group["aggs"].append((position, agg.kind, agg.window_ms))
    hash_groups = []
    for (by, ttl), group in hashes.items():
        ofs = tuple(group["ofs"].items())
        names = [of for of, _ in ofs]
        stats = tuple(s for s in STAT_ORDER if s in group["stats"]) + tuple(
            sorted(s for s in group["stats"] if s.startswith("#")))
        aggs = tuple((p, kind, names.index(of) if of in names else -1) for p, kind, of in group["aggs"])
        hash_groups.append(_HashGroup(by, ttl, stats, ofs, aggs))
    stream_groups = [_StreamGroup(by, g["keep"], g["amounts"], tuple(g["aggs"])) for by, g in streams.items()]
    distinct_groups = [  # count_distinct first: a window with no value at all answers seen without a read
        _DistinctGroup(by, of, g["keep"], tuple(sorted(g["aggs"], key=lambda a: a[1] != "count_distinct")))
        for (by, of), g in distincts.items()]
    code = KIND_CODES.__getitem__
    text = orjson.dumps({
        "h": [[use(g.by), g.by, g.ttl_ms, g.stats, [[use(of), OF_CODES[of], distinct] for of, distinct in g.ofs],
               [[p + 1, code(kind), k + 1] for p, kind, k in g.aggs]] for g in hash_groups],
        "e": [[use(g.by), g.by, g.keep_ms, g.amounts, [[p + 1, code(kind), w] for p, kind, w in g.aggs]]
              for g in stream_groups],
        "d": [[use(g.by), g.by, use(g.of), OF_CODES[g.of], g.keep_ms,
               [[p + 1, code(kind), w] for p, kind, w in g.aggs]] for g in distinct_groups],
        "t": [p + 1 for p in tx_counts],
        "x": max((-(-ttl // 1000) for _, ttl in folded), default=0),
        "z": [orjson.dumps(agg.default).decode() for agg in aggregates],
    })
    return _Plan(
        aggregates, tuple(fields), tuple(hash_groups), tuple(stream_groups), tuple(distinct_groups),
        tuple(tx_counts), max((ttl for _, ttl in folded), default=0),
        tuple(agg.default for agg in aggregates),
        tuple(i for i, agg in enumerate(aggregates) if aggregate_type(agg.kind) == "double"),
        text, hashlib.blake2b(text, digest_size=4).hexdigest(), _getter(tuple(fields)),
    )


def _getter(fields: tuple[str, ...]) -> Callable[[Event], tuple]:
    """The values of `fields` of an event, as a tuple."""
    if not fields:
        return lambda event: ()
    if len(fields) == 1:
        get = attrgetter(fields[0])
        return lambda event: (get(event),)
    return attrgetter(*fields)


def _result(plan: _Plan, snapshot: list | dict) -> StateResult:
    """One event's answer from the script: its values (doubles as floats), or the error as a `StateFailure`."""
    if snapshot.__class__ is dict:
        return StateFailure(str(snapshot.get("error"))[:200])
    for i in plan.doubles:
        snapshot[i] = float(snapshot[i])
    return tuple(snapshot)


def _welford(n: int, mean: float, m2: float, x: float) -> tuple[int, float, float]:
    n += 1
    delta = x - mean
    mean += delta / n
    return n, mean, m2 + delta * (x - mean)


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


@dataclass(frozen=True, slots=True)
class Answered:
    """A `PendingState` whose answer is known already."""

    answer: list[StateResult]

    def result(self) -> list[StateResult]:
        return self.answer

    def cancel(self) -> None:
        """The call ran; nothing is in flight."""


class InMemoryStateStore:
    """The same contract and values as `RedisStateStore`, in process: for offline replay and tests. History and
    dedupe records expire by event time; windows are trimmed as in Redis."""

    def __init__(self, dedupe_ttl_s: int = 3600) -> None:
        self.dedupe_ttl_s = dedupe_ttl_s
        # tx -> [time of the last content recorded, {fingerprint: (plan id, values)}]
        self._seen: dict[str, list] = {}
        self._hashes: dict[tuple[str, str, int], dict[str, Any]] = {}  # (by, value, ttl) -> statistics
        self._streams: dict[tuple[str, str], dict[str, tuple[int, float | None]]] = {}  # member -> time, amount
        self._distincts: dict[tuple[str, str, str], dict[str, int]] = {}  # value -> last time
        self._decisions: dict[str, str] = {}

    def connect(self) -> None:
        """Nothing to connect to."""

    def observe_later(self, aggregates: Sequence[Aggregate], events: Sequence[Event]) -> Answered:
        """`observe`, run now (in process there is nothing to overlap with)."""
        return Answered(self.observe(aggregates, events))

    def remember(self, decisions: Sequence[tuple[str, str]]) -> None:
        self._decisions.update(decisions)

    def recall(self, transaction_id: str) -> str | None:
        return self._decisions.get(transaction_id)

    def observe(self, aggregates: Sequence[Aggregate], events: Sequence[Event]) -> list[StateResult]:
        if not aggregates:
            return [()] * len(events)
        plan = plan_for(aggregates)
        record_ttl_ms = max(self.dedupe_ttl_s * 1000, plan.tx_count_ttl_ms)
        results: list[StateResult] = []
        for event in events:
            content, ts = fingerprint(event), event.timestamp_ms
            record = self._seen.get(event.transaction_id)
            if record is None or ts - record[0] > record_ttl_ms:
                record = [ts, {}]
            variants = record[1]
            known = variants.get(content)
            if known is not None:
                results.append(known[1] if known[0] == plan.id else
                               self._aggregate(plan, event, content, len(variants) - 1, False))
                continue
            values = self._aggregate(plan, event, content, len(variants), True)
            if len(variants) < MAX_ID_VARIANTS:
                variants[content] = (plan.id, values)
                record[0] = ts
                self._seen[event.transaction_id] = record
            results.append(values)
        return results

    def _aggregate(self, plan: _Plan, event: Event, content: str, variants: int, record: bool) -> Values:
        values = list(plan.defaults)
        for position in plan.tx_counts:
            values[position] = variants
        ts = event.timestamp_ms
        for group in plan.hashes:
            self._hash(group, event, ts, values, record)
        for group in plan.streams:
            self._stream(group, event, content, ts, values, record)
        for group in plan.distincts:
            self._distinct(group, event, ts, values, record)
        return tuple(values)

    def _hash(self, g: _HashGroup, event: Event, ts: int, values: list, record: bool) -> None:
        entity = getattr(event, g.by)
        if not entity:
            return
        present = [getattr(event, of) or None for of, _ in g.ofs]
        if not g.stats and not any(present):
            return
        key = (g.by, entity, g.ttl_ms)
        st = self._hashes.get(key)
        if st is None or ts - st["touched"] > g.ttl_ms:  # expired: ttl after the entity's last event
            st = {"touched": ts, "v": {}}  # and the statistics once written, as in the script's hash
        n, s, f, last, m = st.get("n", 0), st.get("s", 0.0), st.get("f"), st.get("l"), st.get("m")
        # Welford's count is n, or k once they differ (a mean declared after the count starts from nothing)
        m, q, k = (0.0, 0.0, 0) if m is None else (m, st["q"], st.get("k", n))
        marks = [value is not None and value in st["v"].get(of, ()) for (of, _), value in
                 zip(g.ofs, present, strict=True)]
        distinct = [st.get(f"#{of}", len(st["v"].get(of, ()))) for of, _ in g.ofs]
        for position, kind, i in g.aggs:
            if kind == "count":
                values[position] = n
            elif kind == "mean":
                values[position] = m
            elif kind == "std":
                if k > 0:
                    values[position] = math.sqrt(q / k)
            elif kind == "sum":
                values[position] = s
            elif kind == "seen":
                if present[i] is not None:
                    values[position] = marks[i]
            elif kind == "count_distinct":
                if present[i] is not None:
                    values[position] = distinct[i]
            elif kind == "first_seen_age":
                if f is not None:
                    values[position] = max(0, ts - f)
            elif last is not None:  # since_last
                values[position] = max(0, ts - last)
        if not record:
            return
        self._hashes[key] = st
        st["touched"] = max(st["touched"], ts)
        stats = g.stats
        if "n" in stats:
            st["n"] = n + 1
        if "m" in stats:
            k, mean, m2 = _welford(k, m, q, event.amount)
            if _finite(mean, m2):
                st["m"], st["q"] = mean, m2
                if "k" in st or k != n + 1:
                    st["k"] = k
        if "s" in stats and _finite(s + event.amount):
            st["s"] = s + event.amount
        if "f" in stats and not (f is not None and f <= ts):
            st["f"] = ts
        if "l" in stats and not (last is not None and last >= ts):
            st["l"] = ts
        for (of, counted), value, mark, count in zip(g.ofs, present, marks, distinct, strict=True):
            if value is not None and not mark:
                st["v"].setdefault(of, set()).add(value)
            if value is not None and counted:
                st[f"#{of}"] = count + (not mark)

    def _stream(self, g: _StreamGroup, event: Event, content: str, ts: int, values: list, record: bool) -> None:
        entity = getattr(event, g.by)
        if not entity:
            return
        key = (g.by, entity)
        members = self._streams.get(key, {})
        windows: dict[int, tuple[int, float, float, float]] = {}
        for position, kind, w in g.aggs:
            low = ts - w
            if kind == "count":
                values[position] = sum(1 for t, _ in members.values() if low < t <= ts)
            elif kind in ("sum", "mean", "std"):
                stats = windows.get(w)
                if stats is None:
                    n, m, q, s = 0, 0.0, 0.0, 0.0
                    for _, _, x in sorted((t, member, x) for member, (t, x) in members.items()
                                            if low < t <= ts and x is not None):
                        n, m, q = _welford(n, m, q, x)
                        s += x
                    windows[w] = stats = (n, m, q, s)
                n, m, q, s = stats
                if kind == "sum":
                    values[position] = s
                elif kind == "mean":
                    values[position] = m
                elif n > 0:
                    values[position] = math.sqrt(q / n)
            else:
                times = [t for t, _ in members.values() if low < t <= ts]
                if times:
                    values[position] = ts - (min(times) if kind == "first_seen_age" else max(times))
        if not record:
            return
        member = f"{event.transaction_id}|{content}"
        if g.amounts:
            member += f"={event.amount:.17g}"  # as the script writes it: the window's order is (time, member)
        members[member] = (ts, event.amount if g.amounts else None)
        if ts % TRIM_EVERY == 0:
            for old in [m for m, (t, _) in members.items() if t <= ts - g.keep_ms]:
                del members[old]
        self._streams[key] = members

    def _distinct(self, g: _DistinctGroup, event: Event, ts: int, values: list, record: bool) -> None:
        entity, value = getattr(event, g.by), getattr(event, g.of)
        if not entity or not value:
            return
        key = (g.by, entity, g.of)
        last_seen = self._distincts.get(key, {})
        for position, kind, w in g.aggs:
            if kind == "count_distinct":
                values[position] = sum(1 for t in last_seen.values() if t > ts - w)
            else:
                values[position] = value in last_seen and last_seen[value] > ts - w
        if not record:
            return
        last_seen[value] = max(last_seen.get(value, ts), ts)
        if ts % TRIM_EVERY == 0:
            for old in [v for v, t in last_seen.items() if t <= ts - g.keep_ms]:
                del last_seen[old]
        self._distincts[key] = last_seen


class RedisStateStore:
    """Aggregates in Redis: one Lua script call per batch.

    Busy is not down. A Redis that answers late is waited for (the client's socket timeout, `make_state_store`:
    `redis.unavailable_after_s`), and one that replies BUSY (another client's script) or LOADING (reading its
    data after a restart) is asked again for up to `unavailable_after_s`. Only a refused or dropped connection,
    or no answer within that time, is `StateUnavailable`."""

    def __init__(self, client: redis.Redis, key_prefix: str = "fm:", dedupe_ttl_s: int = 3600,
                 verdict_window_s: int = 86_400, unavailable_after_s: float = 5.0) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError(f"redis.key_prefix {key_prefix!r} must not contain braces: keys carry the entity "
                             f"as a Redis Cluster hash tag")
        self.client = client
        self.key_prefix = key_prefix
        self.dedupe_ttl_s = dedupe_ttl_s
        self.verdict_window_s = verdict_window_s
        self.unavailable_after_s = unavailable_after_s
        self._script = client.register_script(AGGREGATES_LUA)  # re-loads itself on NOSCRIPT (Redis restarted)
        self._unsettled: redis.connection.Connection | None = None  # `remember` sent, its answer not read yet
        self._in_flight: deque[PendingObserve] = deque()  # scripts sent on one connection, answers unread, oldest first

    def connect(self) -> None:
        """Ping Redis and load the script, so the first batch does not pay for either."""
        try:
            self.client.ping()
            self._script.sha = self.client.script_load(AGGREGATES_LUA)
        except redis.RedisError as exc:
            raise StateUnavailable(f"Redis at {_address(self.client)} did not answer: {exc}") from exc

    def observe(self, aggregates: Sequence[Aggregate], events: Sequence[Event]) -> list[StateResult]:
        if not aggregates:
            return [()] * len(events)
        plan = plan_for(aggregates)
        args, pause_s = self._args(plan, events), BUSY_FIRST_PAUSE_S
        deadline = time.monotonic() + self.unavailable_after_s
        while True:
            try:
                snapshots = orjson.loads(self._script(args=args))
            except redis.RedisError as exc:
                if _busy(exc) and time.monotonic() + pause_s < deadline:  # busy, not down: ask again
                    time.sleep(pause_s)
                    pause_s = min(BUSY_LONGEST_PAUSE_S, pause_s * 2)
                    continue
                if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) or _busy(exc):
                    raise StateUnavailable(f"Redis did not answer: {exc}") from exc
                if isinstance(exc, redis.ResponseError):  # Redis answered but refused the script: not an outage
                    return [StateFailure(f"Redis refused the state update: {str(exc)[:160]}")] * len(events)
                raise StateUnavailable(f"Redis failed: {exc}") from exc
            return [_result(plan, snapshot) for snapshot in snapshots]

    def observe_later(self, aggregates: Sequence[Aggregate], events: Sequence[Event]) -> PendingObserve:
        """`observe`, sent now and answered by `PendingObserve.result()`: Redis runs the script (after the ones sent
        before it) while the caller does other work (the engine scores the batch, or decides the one before)."""
        return PendingObserve(self, aggregates, events)

    def _read_through(self, pending: PendingObserve) -> None:
        """Read the answers of the scripts in flight, oldest first, up to `pending`'s; the connection goes back to
        the pool once none is in flight."""
        in_flight = self._in_flight
        while pending._reply is _UNREAD:
            head = in_flight[0]
            try:
                reply = head._connection.read_response()
            except (redis.ResponseError, redis.BusyLoadingError) as exc:  # an answer (refused, LOADING): in step
                reply = exc
            except BaseException as exc:  # no answer: this call and those sent after it are lost
                self._drop_in_flight(exc)
                continue
            in_flight.popleft()
            head._reply = reply
            if not in_flight:
                self.client.connection_pool.release(head._connection)

    def _drop_in_flight(self, exc: BaseException) -> None:
        """Close the scripts' connection: every call in flight on it ends with `exc`."""
        connection = self._in_flight[0]._connection
        connection.disconnect()
        self.client.connection_pool.release(connection)
        for pending in self._in_flight:
            pending._reply = exc
        self._in_flight.clear()

    def _args(self, plan: _Plan, events: Sequence[Event]) -> list[str | int | bytes]:
        return [self.key_prefix, self.dedupe_ttl_s, plan.id, plan.text, orjson.dumps([plan.row(e) for e in events])]


    def remember(self, decisions: Sequence[tuple[str, str]]) -> None:
        """One hash per hour of deciding (`dec:<hour>`: transaction id -> decision), kept for the verdict window.
        Sent without waiting for Redis' answer: the next `remember` or `recall` reads it (and logs a failure)."""
        self._settle()
        if not decisions:
            return
        key = f"{self.key_prefix}dec:{int(time.time()) // DECISION_BUCKET_S}"
        pool, connection = self.client.connection_pool, None
        try:
            connection = pool.get_connection()
            connection.send_packed_command(connection.pack_commands([
                ("HSET", key, *chain.from_iterable(decisions)),
                ("EXPIRE", key, self.verdict_window_s + DECISION_BUCKET_S),
            ]))
        except BaseException as exc:
            if connection is not None:
                connection.disconnect()
                pool.release(connection)
            if isinstance(exc, redis.RedisError):
                raise StateUnavailable(f"Redis did not keep the decisions: {exc}") from exc
            raise
        self._unsettled = connection

    def _settle(self) -> None:
        """Read the answer to the last `remember` (long there as a rule) and give its connection back."""
        connection, self._unsettled = self._unsettled, None
        if connection is None:
            return
        try:
            connection.read_response()
            connection.read_response()
        except Exception as exc:  # the second answer may be unread: the connection is closed
            connection.disconnect()
            log.warning("decisions not kept for verdicts: %s: %s", exc.__class__.__name__, exc,
                        extra={"dependency": "redis"})
        finally:
            self.client.connection_pool.release(connection)

    def recall(self, transaction_id: str) -> str | None:
        """Looks through the hours of the verdict window, newest first (one pipelined round trip), after the
        decisions sent last are kept."""
        self._settle()
        hour = int(time.time()) // DECISION_BUCKET_S
        hours = range(hour, hour - self.verdict_window_s // DECISION_BUCKET_S - 2, -1)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for bucket in hours:
                    pipe.hget(f"{self.key_prefix}dec:{bucket}", transaction_id)
                found = pipe.execute()
        except redis.RedisError as exc:
            raise StateUnavailable(f"Redis did not answer: {exc}") from exc
        return next((value.decode() for value in found if value is not None), None)


_UNREAD = object()  # a `PendingObserve` whose answer is not read yet


class PendingObserve:
    """One `observe` script call, sent at creation on the connection of the calls still in flight (one connection:
    Redis runs them in the order sent, so each entity's events are recorded in order) or on one from the pool;
    `result()` reads the answers up to its own and raises as `observe` does, `cancel()` drops its own."""

    def __init__(self, store: RedisStateStore, aggregates: Sequence[Aggregate], events: Sequence[Event]) -> None:
        self._store, self._aggregates, self._events, self._reply = store, aggregates, events, _UNREAD
        self._plan = plan_for(aggregates) if aggregates else None
        if self._plan is None:  # nothing to keep: answered without Redis
            self._reply = []
            return
        args, in_flight = store._args(self._plan, events), store._in_flight
        try:
            self._connection = in_flight[-1]._connection if in_flight else store.client.connection_pool.get_connection()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StateUnavailable(f"Redis did not answer: {exc}") from exc
        in_flight.append(self)
        try:
            self._connection.send_command("EVALSHA", store._script.sha, 0, *args)
        except BaseException as exc:  # what was sent on the connection is lost with it
            store._drop_in_flight(exc)
            if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                raise StateUnavailable(f"Redis did not answer: {exc}") from exc
            raise

    def result(self) -> list[StateResult]:
        store, plan = self._store, self._plan
        if plan is None:
            return [()] * len(self._events)
        store._read_through(self)
        reply = self._reply
        if isinstance(reply, redis.exceptions.NoScriptError) or _busy(reply):  # restarted without the script, or
            return store.observe(self._aggregates, self._events)  # busy: `observe` loads it, waits, maps an outage
        if isinstance(reply, redis.ResponseError):  # Redis answered but refused the script: not an outage
            return [StateFailure(f"Redis refused the state update: {str(reply)[:160]}")] * len(self._events)
        if isinstance(reply, (redis.ConnectionError, redis.TimeoutError)):
            raise StateUnavailable(f"Redis did not answer: {reply}") from reply
        if isinstance(reply, redis.RedisError):
            raise StateUnavailable(f"Redis failed: {reply}") from reply
        if isinstance(reply, BaseException):
            raise reply
        return [_result(plan, snapshot) for snapshot in orjson.loads(reply)]

    def cancel(self) -> None:
        """Drop the call: its answer is read and thrown away, so the calls sent after it stay in step."""
        if self._plan is not None:
            self._store._read_through(self)


BUSY_FIRST_PAUSE_S, BUSY_LONGEST_PAUSE_S = 0.01, 0.25  # between the calls to a Redis that replied BUSY or LOADING


def _busy(reply: object) -> bool:
    """Whether a reply says Redis is busy rather than down: BUSY (another client's script runs past Redis'
    busy-reply threshold) or LOADING (it is reading its data)."""
    return isinstance(reply, redis.BusyLoadingError) or (
        isinstance(reply, redis.ResponseError) and str(reply).startswith("BUSY"))


def _address(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"


def make_state_store(settings: Settings) -> RedisStateStore:
    """A Redis store that waits for a slow Redis up to `redis.unavailable_after_s` (its calls' socket timeout):
    a busy Redis delays decisions (the consumer falls behind, and the lag and latency alerts say so) rather
    than degrading them."""
    timeout_s = settings.redis.unavailable_after_s
    client = redis.Redis.from_url(  # no client-side retries: the engine retries after `redis_retry_after_s`
        settings.redis.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )
    return RedisStateStore(client, settings.redis.key_prefix, settings.redis.dedupe_ttl_s,
                           settings.worker.verdict_window_s, timeout_s)
