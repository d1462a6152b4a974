"""Rule state: what each account and IP did before an event, kept in Redis (or in process for replay).

`observe(rules, events)` judges a whole batch in one round trip: for each event, in order, it returns the
`AccountState` *before* that event and then records the event, or a `StateFailure` for an event whose state
could not be read or written (one bad account never fails the others). It is idempotent per transaction id and
content: an event seen before is not recorded again and gets the state it was first judged against, so a
redelivery after a crash is judged the same and counted once. The same id with other content is a new event,
marked `id_reused`. Every key has a TTL, so memory is bounded by the time windows.

Redis keys (prefix from config, default `fm:`):
  tx:<transaction_id>  string: content fingerprint + the snapshot the event was judged against; once the id comes
                       with other content, a hash: fingerprint -> snapshot (TTL `dedupe_ttl`)
  acct:<account>       hash: n, mean, m2 (running amount statistics), c:<country> and p:<counterparty> seen
                       (TTL `history_ttl`)
  vel:<account>        sorted set tx|fingerprint -> event time (TTL the longest velocity window)
  ip:<ip>              sorted set account -> last event time (TTL the longest fan-out window)
acct, vel and ip live at least their TTL after each event that touched them, and at most an eighth (or an hour)
longer: the script pushes an expiry out only once less than the TTL is left.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import chain
from typing import Any, Protocol

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fraudmon.core.config import Settings
from fraudmon.core.errors import StateUnavailable
from fraudmon.core.events import Event
from stream_app.rules import AccountState, RuleSet

MAX_KNOWN_COUNTRIES = 5
MAX_ID_VARIANTS = 16  # as MAX_VARIANTS in lua/observe.lua
OBSERVE_LUA = resources.files("stream_app").joinpath("lua/observe.lua").read_text()
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StateFailure:
    """The state of one event could not be read or written (for example a corrupt key); says why."""

    reason: str


StateResult = AccountState | StateFailure


class StateStore(Protocol):
    def connect(self) -> None:
        """Check the store answers and prepare it; raises `StateUnavailable`."""
        ...

    def observe(self, rules: RuleSet, events: Sequence[Event]) -> list[StateResult]:
        """The state before each event (in order), recording each event once. Raises `StateUnavailable`."""
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


def _state(snapshot: dict[str, Any] | list) -> StateResult:
    """Decode the wire forms: the Lua script's positional array (see `lua/observe.lua`), or a JSON object with
    named fields (the in-process store, snapshots stored by earlier versions, and errors)."""
    if snapshot.__class__ is list:
        replayed, reused, n, country_seen, counterparty_seen, mean, std, velocity, fanout, known = snapshot
        n = int(n)
        return AccountState(
            n, _pairs(velocity), _pairs(fanout), country_seen == 1, tuple(known) if known else (),
            counterparty_seen == 1, n, round(float(mean), 6), round(float(std), 6), replayed == 1, reused == 1,
        )
    if "error" in snapshot:
        return StateFailure(str(snapshot["error"])[:200])
    return AccountState(
        prior_count=int(snapshot["prior_count"]),
        velocity_counts={int(w): int(c) for w, c in snapshot["velocity"] or ()},
        fanout_counts={int(w): int(c) for w, c in snapshot["fanout"] or ()},
        country_seen=bool(snapshot["country_seen"]),
        known_countries=tuple(snapshot["known_countries"] or ()),
        counterparty_seen=bool(snapshot["counterparty_seen"]),
        amount_count=int(snapshot["amount_count"]),
        # both stores agree to this precision (Redis' JSON keeps 14 digits)
        amount_mean=round(float(snapshot["amount_mean"]), 6),
        amount_std=round(float(snapshot["amount_std"]), 6),
        replayed=bool(snapshot["replayed"]),
        id_reused=bool(snapshot["id_reused"]),
    )


def _pairs(flat: list) -> dict:
    """`[window, count, window, count, ...]` as `{window: count}` (one window is the usual case)."""
    if len(flat) == 2:
        return {flat[0]: flat[1]}
    items = iter(flat)
    return dict(zip(items, items, strict=True))


class InMemoryStateStore:
    """The same contract as `RedisStateStore`, in process: for offline replay and tests.

    Windows are pruned as events arrive; account history has no TTL (a replay is bounded by its file)."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, dict]] = defaultdict(dict)  # tx -> fingerprint -> snapshot
        self._stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # n, mean, m2
        self._countries: dict[str, set[str]] = defaultdict(set)
        self._counterparties: dict[str, set[str]] = defaultdict(set)
        self._times: dict[str, dict[str, int]] = defaultdict(dict)  # account -> tx|fingerprint -> event time
        self._ip_accounts: dict[str, dict[str, int]] = defaultdict(dict)  # ip -> account -> last event time
        self._decisions: dict[str, str] = {}

    def connect(self) -> None:
        """Nothing to connect to."""

    def remember(self, decisions: Sequence[tuple[str, str]]) -> None:
        self._decisions.update(decisions)

    def recall(self, transaction_id: str) -> str | None:
        return self._decisions.get(transaction_id)

    def observe(self, rules: RuleSet, events: Sequence[Event]) -> list[StateResult]:
        velocity, fanout = rules.velocity_windows_ms, rules.fanout_windows_ms
        longest_velocity, longest_fanout = max(velocity, default=0), max(fanout, default=0)
        states: list[StateResult] = []
        for event in events:
            content = fingerprint(event)
            variants = self._seen[event.transaction_id]
            snapshot = variants.get(content)
            if snapshot is not None:
                states.append(_state({**snapshot, "replayed": True}))
                continue
            account, ts = event.account_id, event.timestamp_ms
            n, mean, m2 = self._stats[account]
            std = math.sqrt(m2 / n) if n else 0.0
            countries = self._countries[account]
            times = self._times[account]
            users = self._ip_accounts[event.ip] if event.ip else {}
            if event.ip:
                users[account] = max(users.get(account, ts), ts)
            country_seen = not event.country or event.country in countries
            counterparty_seen = not event.counterparty_id or event.counterparty_id in self._counterparties[account]
            snapshot = {
                "replayed": False, "id_reused": bool(variants), "prior_count": n,
                "country_seen": country_seen,
                "known_countries": [] if country_seen else sorted(countries)[:MAX_KNOWN_COUNTRIES],
                "counterparty_seen": counterparty_seen,
                "amount_count": n, "amount_mean": mean, "amount_std": std,
                "velocity": [[w, sum(1 for t in times.values() if ts - w < t <= ts)] for w in velocity],
                "fanout": [[w, sum(1 for t in users.values() if t > ts - w)] for w in fanout],
            }
            if len(variants) < MAX_ID_VARIANTS:
                variants[content] = snapshot
            states.append(_state(snapshot))
            # record the event
            n += 1
            delta = event.amount - mean
            mean += delta / n
            self._stats[account] = [n, mean, m2 + delta * (event.amount - mean)]
            if event.country:
                countries.add(event.country)
            if event.counterparty_id:
                self._counterparties[account].add(event.counterparty_id)
            if longest_velocity:
                times[f"{event.transaction_id}|{content}"] = ts
                for tx in [tx for tx, t in times.items() if t <= ts - longest_velocity]:
                    del times[tx]
            if event.ip and longest_fanout:
                for other in [a for a, t in users.items() if t <= ts - longest_fanout]:
                    del users[other]
        return states


class RedisStateStore:
    """Rule state in Redis: one Lua script call per batch, with socket timeouts derived from the latency budget."""

    def __init__(self, client: redis.Redis, key_prefix: str = "fm:", dedupe_ttl_s: int = 3600,
                 verdict_window_s: int = 86_400) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.dedupe_ttl_s = dedupe_ttl_s
        self.verdict_window_s = verdict_window_s
        self._script = client.register_script(OBSERVE_LUA)  # re-loads itself on NOSCRIPT (Redis restarted)
        self._unsettled: redis.connection.Connection | None = None  # `remember` sent, its answer not read yet
        self._in_flight: deque[PendingObserve] = deque()  # scripts sent on one connection, answers unread, oldest first

    def connect(self) -> None:
        """Ping Redis and load the script, so the first batch does not pay for either."""
        try:
            self.client.ping()
            self._script.sha = self.client.script_load(OBSERVE_LUA)
        except redis.RedisError as exc:
            raise StateUnavailable(f"Redis at {_address(self.client)} did not answer: {exc}") from exc

    def observe(self, rules: RuleSet, events: Sequence[Event]) -> list[StateResult]:
        try:
            snapshots = orjson.loads(self._script(args=self._args(rules, events)))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StateUnavailable(f"Redis did not answer: {exc}") from exc
        except redis.ResponseError as exc:  # Redis answered but refused the script: not an outage
            return [StateFailure(f"Redis refused the state update: {str(exc)[:160]}")] * len(events)
        except redis.RedisError as exc:
            raise StateUnavailable(f"Redis failed: {exc}") from exc
        return [_state(snapshot) for snapshot in snapshots]

    def observe_later(self, rules: RuleSet, events: Sequence[Event]) -> PendingObserve:
        """`observe`, sent now and answered by `PendingObserve.result()`: Redis runs the script (after the ones sent
        before it) while the caller does other work (the engine scores the batch, or decides the one before)."""
        return PendingObserve(self, rules, events)

    def _read_through(self, pending: PendingObserve) -> None:
        """Read the answers of the scripts in flight, oldest first, up to `pending`'s; the connection goes back to
        the pool once none is in flight."""
        in_flight = self._in_flight
        while pending._reply is _UNREAD:
            head = in_flight[0]
            try:
                reply = head._connection.read_response()
            except redis.ResponseError as exc:  # an answer (the script refused): the connection is still in step
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

    def _args(self, rules: RuleSet, events: Sequence[Event]) -> list[str | int | bytes]:
        return [
            self.key_prefix,
            max(1, rules.history_ttl_ms // 1000),
            self.dedupe_ttl_s,
            ",".join(map(str, rules.velocity_windows_ms)),
            ",".join(map(str, rules.fanout_windows_ms)),
            MAX_KNOWN_COUNTRIES,
            orjson.dumps([
                (e.transaction_id, fingerprint(e), e.account_id, e.timestamp_ms, e.country or "", e.ip or "",
                 e.counterparty_id or "", e.amount) for e in events
            ]),
        ]


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
    Redis runs them in the order sent, so each account's events are recorded in order) or on one from the pool;
    `result()` reads the answers up to its own and raises as `observe` does, `cancel()` drops its own."""

    def __init__(self, store: RedisStateStore, rules: RuleSet, events: Sequence[Event]) -> None:
        self._store, self._rules, self._events, self._reply = store, rules, events, _UNREAD
        args, in_flight = store._args(rules, events), store._in_flight
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
        store = self._store
        store._read_through(self)
        reply = self._reply
        if isinstance(reply, redis.exceptions.NoScriptError):  # Redis restarted without the script: call again,
            return store.observe(self._rules, self._events)  # which loads it (and maps an outage meanwhile)
        if isinstance(reply, redis.ResponseError):  # Redis answered but refused the script: not an outage
            return [StateFailure(f"Redis refused the state update: {str(reply)[:160]}")] * len(self._events)
        if isinstance(reply, (redis.ConnectionError, redis.TimeoutError)):
            raise StateUnavailable(f"Redis did not answer: {reply}") from reply
        if isinstance(reply, redis.RedisError):
            raise StateUnavailable(f"Redis failed: {reply}") from reply
        if isinstance(reply, BaseException):
            raise reply
        return [_state(snapshot) for snapshot in orjson.loads(reply)]

    def cancel(self) -> None:
        """Drop the call: its answer is read and thrown away, so the calls sent after it stay in step."""
        self._store._read_through(self)


def _address(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"


def make_state_store(settings: Settings) -> RedisStateStore:
    """A Redis store whose calls time out at half the latency budget (at least 5 ms), so a slow Redis
    degrades decisions instead of delaying them past the budget."""
    timeout_s = max(0.005, settings.worker.latency_budget_ms * 0.5 / 1000.0)
    client = redis.Redis.from_url(  # no client-side retries: the engine retries after `redis_retry_after_s`
        settings.redis.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )
    return RedisStateStore(client, settings.redis.key_prefix, settings.redis.dedupe_ttl_s,
                           settings.worker.verdict_window_s)
