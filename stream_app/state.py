"""Rule state: what each account and IP did before an event, kept in Redis (or in process for replay).

`observe(rules, events)` judges a whole batch in one round trip: for each event, in order, it returns the
`AccountState` *before* that event and then records the event. It is idempotent per `transaction_id`: an event
seen before is not recorded again and gets the state it was first judged against, so a redelivery after a
crash is judged the same and counted once. Every key has a TTL, so memory is bounded by the time windows.

Redis keys (prefix from config, default `fm:`):
  tx:<transaction_id>  snapshot of the state the event was judged against (TTL `dedupe_ttl`)
  acct:<account>       hash: n, mean, m2 (running amount statistics), c:<country> and p:<counterparty> seen
                       (TTL `history_ttl`, refreshed by each event)
  vel:<account>        sorted set tx -> event time     ip:<ip>  sorted set account -> last event time
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fraudmon.config import Settings
from fraudmon.errors import StateUnavailable
from stream_app.rules import AccountState, RuleSet
from stream_app.schema import Event

MAX_KNOWN_COUNTRIES = 5


class StateStore(Protocol):
    def connect(self) -> None:
        """Check the store answers and prepare it; raises `StateUnavailable`."""
        ...

    def observe(self, rules: RuleSet, events: Sequence[Event]) -> list[AccountState]:
        """The state before each event (in order), recording each event once. Raises `StateUnavailable`."""
        ...


def _state(snapshot: list) -> AccountState:
    """Decode the wire form shared by both stores (a JSON array, see `_snapshot`)."""
    replayed, prior, country_seen, countries, cp_seen, n, mean, std, velocity, fanout = snapshot
    return AccountState(
        prior_count=int(prior),
        velocity_counts={int(w): int(c) for w, c in velocity},
        fanout_counts={int(w): int(c) for w, c in fanout},
        country_seen=bool(country_seen),
        known_countries=tuple(countries),
        counterparty_seen=bool(cp_seen),
        amount_count=int(n),
        amount_mean=round(float(mean), 6),  # both stores agree to this precision (Redis' JSON keeps 14 digits)
        amount_std=round(float(std), 6),
        replayed=bool(replayed),
    )


class InMemoryStateStore:
    """The same contract as `RedisStateStore`, in process: for offline replay and tests.

    Windows are pruned as events arrive; account history has no TTL (a replay is bounded by its file)."""

    def __init__(self) -> None:
        self._seen: dict[str, list] = {}
        self._stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # n, mean, m2
        self._countries: dict[str, set[str]] = defaultdict(set)
        self._counterparties: dict[str, set[str]] = defaultdict(set)
        self._times: dict[str, dict[str, int]] = defaultdict(dict)  # account -> tx -> event time
        self._ip_accounts: dict[str, dict[str, int]] = defaultdict(dict)  # ip -> account -> last event time

    def connect(self) -> None:
        """Nothing to connect to."""

    def observe(self, rules: RuleSet, events: Sequence[Event]) -> list[AccountState]:
        velocity, fanout = rules.velocity_windows_ms, rules.fanout_windows_ms
        longest_velocity, longest_fanout = max(velocity, default=0), max(fanout, default=0)
        states = []
        for event in events:
            snapshot = self._seen.get(event.transaction_id)
            if snapshot is not None:
                states.append(_state([True, *snapshot[1:]]))
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
            snapshot = [
                False, n,
                country_seen, [] if country_seen else sorted(countries)[:MAX_KNOWN_COUNTRIES],
                not event.counterparty_id or event.counterparty_id in self._counterparties[account],
                n, mean, std,
                [[w, sum(1 for t in times.values() if ts - w < t <= ts)] for w in velocity],
                [[w, sum(1 for t in users.values() if t > ts - w)] for w in fanout],
            ]
            self._seen[event.transaction_id] = snapshot
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
                times[event.transaction_id] = ts
                for tx in [tx for tx, t in times.items() if t <= ts - longest_velocity]:
                    del times[tx]
            if event.ip and longest_fanout:
                for other in [a for a, t in users.items() if t <= ts - longest_fanout]:
                    del users[other]
        return states


# One round trip per batch. KEYS: none (keys are built from the prefix, so a single Redis, not a cluster).
# ARGV: prefix, history_ttl_s, dedupe_ttl_s, velocity windows (comma list), fanout windows, and the events as one
# JSON array of [tx, account, ts_ms, country, ip, counterparty, amount]. Returns a JSON array of snapshots.
_OBSERVE_LUA = """
local prefix, history_ttl, dedupe_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local function windows(text)
  local list = {}
  for w in string.gmatch(text, '[^,]+') do list[#list + 1] = tonumber(w) end
  return list
end
local velocity, fanout = windows(ARGV[4]), windows(ARGV[5])
local longest_velocity, longest_fanout = velocity[#velocity] or 0, fanout[#fanout] or 0
-- Entries older than the longest window no longer count (ZCOUNT bounds by time); trimming them on about one
-- event in TRIM_EVERY (by event-time millisecond) keeps busy keys small at a fraction of the calls.
local TRIM_EVERY = 8
local out = {}
for _, row in ipairs(cjson.decode(ARGV[6])) do
  local tx, account, ts, country, ip, cp, amount = row[1], row[2], row[3], row[4], row[5], row[6], row[7]
  local tx_key = prefix .. 'tx:' .. tx
  local known = redis.call('GET', tx_key)
  if known then
    local snapshot = cjson.decode(known)
    snapshot[1] = true
    out[#out + 1] = cjson.encode(snapshot)
  else
    local acct = prefix .. 'acct:' .. account
    local got = redis.call('HMGET', acct, 'n', 'mean', 'm2', 'c:' .. country, 'p:' .. cp)
    local n, mean, m2 = tonumber(got[1]) or 0, tonumber(got[2]) or 0, tonumber(got[3]) or 0
    local std = 0
    if n > 0 then std = math.sqrt(m2 / n) end
    local country_seen, cp_seen = country == '' or got[4] ~= false, cp == '' or got[5] ~= false
    local countries = {}
    if not country_seen then
      local all = {}
      for _, field in ipairs(redis.call('HKEYS', acct)) do
        if string.sub(field, 1, 2) == 'c:' then all[#all + 1] = string.sub(field, 3) end
      end
      table.sort(all)
      for k = 1, math.min(#all, 5) do countries[k] = all[k] end
    end
    local velocity_counts, fanout_counts = {}, {}
    local vel = prefix .. 'vel:' .. account
    for _, w in ipairs(velocity) do
      velocity_counts[#velocity_counts + 1] = {w, redis.call('ZCOUNT', vel, '(' .. (ts - w), ts)}
    end
    local ip_key = prefix .. 'ip:' .. ip
    if ip ~= '' and longest_fanout > 0 then
      redis.call('ZADD', ip_key, 'GT', ts, account)
      if ts % TRIM_EVERY == 0 then redis.call('ZREMRANGEBYSCORE', ip_key, '-inf', ts - longest_fanout) end
      redis.call('PEXPIRE', ip_key, longest_fanout)
    end
    for _, w in ipairs(fanout) do
      local count = 0
      if ip ~= '' then count = redis.call('ZCOUNT', ip_key, '(' .. (ts - w), '+inf') end
      fanout_counts[#fanout_counts + 1] = {w, count}
    end
    local snapshot = cjson.encode({false, n, country_seen, countries, cp_seen, n, mean, std,
                                   velocity_counts, fanout_counts})
    redis.call('SET', tx_key, snapshot, 'EX', dedupe_ttl)
    out[#out + 1] = snapshot
    n = n + 1
    local delta = amount - mean
    mean = mean + delta / n
    m2 = m2 + delta * (amount - mean)
    local update = {'n', n, 'mean', string.format('%.17g', mean), 'm2', string.format('%.17g', m2)}
    if country ~= '' then update[#update + 1] = 'c:' .. country; update[#update + 1] = 1 end
    if cp ~= '' then update[#update + 1] = 'p:' .. cp; update[#update + 1] = 1 end
    redis.call('HSET', acct, unpack(update))
    redis.call('EXPIRE', acct, history_ttl)
    if longest_velocity > 0 then
      redis.call('ZADD', vel, ts, tx)
      if ts % TRIM_EVERY == 0 then redis.call('ZREMRANGEBYSCORE', vel, '-inf', ts - longest_velocity) end
      redis.call('PEXPIRE', vel, longest_velocity)
    end
  end
end
return '[' .. table.concat(out, ',') .. ']'
"""


class RedisStateStore:
    """Rule state in Redis: one Lua script call per batch, with socket timeouts derived from the latency budget."""

    def __init__(self, client: redis.Redis, key_prefix: str = "fm:", dedupe_ttl_s: int = 3600) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.dedupe_ttl_s = dedupe_ttl_s
        self._script = client.register_script(_OBSERVE_LUA)  # re-loads itself on NOSCRIPT (Redis restarted)

    def connect(self) -> None:
        """Ping Redis and load the script, so the first batch does not pay for either."""
        try:
            self.client.ping()
            self._script.sha = self.client.script_load(_OBSERVE_LUA)
        except redis.RedisError as exc:
            raise StateUnavailable(f"Redis at {_address(self.client)} did not answer: {exc}") from exc

    def observe(self, rules: RuleSet, events: Sequence[Event]) -> list[AccountState]:
        args: list[str | int | bytes] = [
            self.key_prefix,
            max(1, rules.history_ttl_ms // 1000),
            self.dedupe_ttl_s,
            ",".join(map(str, rules.velocity_windows_ms)),
            ",".join(map(str, rules.fanout_windows_ms)),
        ]
        args.append(orjson.dumps([
            (e.transaction_id, e.account_id, e.timestamp_ms, e.country or "", e.ip or "", e.counterparty_id or "",
             float(e.amount)) for e in events
        ]))
        try:
            snapshots = orjson.loads(self._script(args=args))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StateUnavailable(f"Redis did not answer: {exc}") from exc
        except redis.RedisError as exc:
            raise StateUnavailable(f"Redis refused the state update: {exc}") from exc
        return [_state(snapshot) for snapshot in snapshots]


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
    return RedisStateStore(client, settings.redis.key_prefix, settings.redis.dedupe_ttl_s)
