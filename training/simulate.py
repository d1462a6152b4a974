"""Synthetic, labelled card and payment traffic: normal accounts with habits, plus named fraud scenarios.

Deterministic for a seed (one `numpy.random.Generator`, no global state). Normal traffic is generated in bulk
with numpy; each fraud scenario is a small generator that injects a compact burst (at most ~60 s of simulated
time) so the same scenarios work in a 30-day training set and in a one-minute live demo. The labels are
returned (and written) apart from the events, the way a bank learns them: later, from chargebacks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from fraudmon.core.errors import TrainingError
from fraudmon.core.eventfiles import NORMAL, GroundTruth
from fraudmon.core.events import CHANNELS, Event
from stream_app.features import COUNTRY_CURRENCY

SCENARIOS = (
    "card_testing", "account_takeover", "ip_fanout", "bust_out", "new_counterparty_transfer", "amount_anomaly",
)

HOME_COUNTRIES = ("DE", "FR", "ES", "IT", "GB", "NL", "PL", "AT", "BE", "US")
HOME_WEIGHTS = (0.25, 0.15, 0.10, 0.10, 0.12, 0.08, 0.06, 0.05, 0.04, 0.05)
TRAVEL_COUNTRIES = ("PT", "GR", "CH", "SE", "DK", "CZ", "HR", "IE", "FR", "ES", "IT", "DE")
FAR_COUNTRIES = ("BR", "NG", "VN", "ID", "PH", "MX", "ZA", "TH")
SHOP_MCCS = ("5411", "5812", "5541", "5999", "4111", "5912", "5311", "5732")
SHOP_MCC_WEIGHTS = (0.30, 0.20, 0.10, 0.10, 0.10, 0.08, 0.07, 0.05)
ODD_MCCS = ("5999", "5815", "5816", "5735")  # misc retail and digital goods: where stolen cards get tested
LUXURY_MCCS = ("5732", "5944", "5999")  # electronics, jewellery: what fraudsters cash out on
CHANNEL_MIX = (0.55, 0.30, 0.07, 0.08)
# Relative activity per UTC hour of day: quiet at night, peaks at lunch and in the evening.
DAILY_PROFILE = (
    0.20, 0.10, 0.08, 0.06, 0.06, 0.10, 0.30, 0.60, 0.90, 1.00, 1.10, 1.30,
    1.40, 1.20, 1.10, 1.10, 1.20, 1.40, 1.50, 1.40, 1.20, 0.90, 0.60, 0.35,
)
MAX_NORMAL_PER_MINUTE = 2.0  # average per account; spread evenly so normal accounts never look like bursts
MIN_NORMAL_CAP = 3  # per account, whatever the span, so short dense runs stay possible
MAX_ABROAD_SHARE = 0.08  # a normal account makes at most this share of its transactions outside its home country
SCENARIO_SPAN_S = 60.0
MIN_ACCOUNTS = 30  # ip_fanout uses up to 25 distinct accounts
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. Normal traffic density follows from `n_events`, `n_accounts` and `duration`."""

    n_events: int = 100_000
    n_accounts: int = 2_000
    start: datetime = datetime(2026, 11, 1, tzinfo=UTC)
    duration: timedelta = timedelta(days=30)
    fraud_rate: float = 0.005
    seed: int = 42

    def validate(self) -> None:
        """Raise `TrainingError` (a `ValueError`) saying which parameter to change."""
        if self.n_events < 1:
            raise TrainingError(f"n_events must be >= 1 (got {self.n_events})")
        if self.n_accounts < MIN_ACCOUNTS:
            raise TrainingError(f"n_accounts must be >= {MIN_ACCOUNTS} so ip_fanout can use 15+ accounts "
                                f"(got {self.n_accounts})")
        if not 0.0 <= self.fraud_rate <= 0.5:
            raise TrainingError(f"fraud_rate is a share of events between 0 and 0.5 (got {self.fraud_rate})")
        if self.duration.total_seconds() < 1:
            raise TrainingError(f"duration must be at least 1 second (got {self.duration})")
        if self.start.tzinfo is None:
            raise TrainingError("start must carry a time zone, e.g. datetime(2026, 11, 1, tzinfo=UTC)")


@dataclass
class _Accounts:
    """The simulated population, one array entry per account."""

    home: np.ndarray  # country code (object)
    travel: np.ndarray  # the one foreign country the account visits
    currency: np.ndarray
    mu: np.ndarray  # log-amount habit
    sigma: np.ndarray
    created_ms: np.ndarray
    channel_cum: np.ndarray  # (n, 4) cumulative channel probabilities
    merchants: np.ndarray  # (n, 8) usual merchant indices
    atm: np.ndarray  # usual ATM merchant index
    n_devices: np.ndarray
    n_ips: np.ndarray
    counterparties: np.ndarray  # (n, 3) usual counterparty account indices
    n_counterparties: np.ndarray

    def device(self, account: int, slot: int = 0) -> str:
        return f"dev-{account}-{slot}"

    def ip(self, account: int, slot: int = 0) -> str:
        return _ip_text(_NORMAL_IP_BASE + account * 4 + slot)


@dataclass
class _Merchants:
    ids: np.ndarray  # object
    mcc: np.ndarray  # object
    shop: np.ndarray  # indices of shops (usual merchants are drawn from here)
    atms: np.ndarray
    odd: np.ndarray  # online merchants normal accounts never use


@dataclass
class _Normal:
    """Normal events as columns, grouped by account, time-ordered within each account."""

    account: np.ndarray
    ts: np.ndarray
    starts: np.ndarray  # first row of each account
    counts: np.ndarray

    def history_before(self, account: int, ts_ms: int) -> int:
        lo = self.starts[account]
        return int(np.searchsorted(self.ts[lo:lo + self.counts[account]], ts_ms))


@dataclass
class _World:
    rng: np.random.Generator
    config: SimulationConfig
    accounts: _Accounts
    merchants: _Merchants
    normal: _Normal
    start_ms: int
    end_ms: int
    fresh: Counter[str] = field(default_factory=Counter)

    def new_id(self, kind: str) -> str:
        """An identifier never used before in this simulation (device, IP, account, counterparty)."""
        self.fresh[kind] += 1
        k = self.fresh[kind]
        n = self.config.n_accounts
        if kind == "ip":
            return _ip_text(_FRAUD_IP_BASE + k)
        if kind == "account":
            return f"acc-{n + k}"
        if kind == "device":
            return f"dev-{n + k}-0"
        return f"ext-{k}"

    def scenario_start(self, offsets_s: list[float]) -> list[int]:
        """Place a scenario's relative offsets at a random moment; squeeze them if the run is shorter."""
        span_ms = self.end_ms - self.start_ms
        scale = min(1.0, span_ms / 1000.0 / max(offsets_s[-1], 1e-9) * 0.999)
        rel = [int(o * scale * 1000) for o in offsets_s]
        t0 = self.start_ms + int(self.rng.integers(0, max(1, span_ms - rel[-1] + 1)))
        return [t0 + r for r in rel]

    def victim(self, ts_ms: int, min_history: int = 5) -> int:
        """A normal account with history before `ts_ms` (the best found among a few candidates)."""
        counts = self.normal.counts
        candidates = self.rng.choice(len(counts), size=min(30, len(counts)), replace=False,
                                     p=counts / counts.sum())
        best, best_history = int(candidates[0]), -1
        for account in candidates:
            history = self.normal.history_before(int(account), ts_ms)
            if history >= min_history:
                return int(account)
            if history > best_history:
                best, best_history = int(account), history
        return best

    def typical_amount(self, account: int) -> float:
        return float(math.exp(self.accounts.mu[account]))

    def base(self, account: int) -> dict[str, Any]:
        """The fields an event of this normal account carries by default."""
        acc = self.accounts
        return {
            "account_id": f"acc-{account}", "currency": acc.currency[account], "country": acc.home[account],
            "account_created_ms": int(acc.created_ms[account]),
        }


_NORMAL_IP_BASE = (11 << 24)  # 11.0.0.0/8: four addresses per account, never shared
_FRAUD_IP_BASE = (185 << 24) + (220 << 16)


def _ip_text(value: int) -> str:
    return f"{(value >> 24) & 255}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _money(value: float) -> float:
    return round(max(0.01, float(value)), 2)


def _offsets(rng: np.random.Generator, n: int, low: float, high: float) -> list[float]:
    """`n` increasing offsets in seconds, gaps uniform in [low, high], starting at 0."""
    gaps = rng.uniform(low, high, size=n - 1) if n > 1 else np.empty(0)
    return [0.0, *np.cumsum(gaps).tolist()]


# Scenario generators: each returns its `n` events as field dicts (see `_GENERATORS`).
def _card_testing(w: _World, n: int) -> list[dict[str, Any]]:
    """Many tiny ecommerce payments in seconds on one stolen card, at merchants the owner never uses."""
    ts = w.scenario_start(_offsets(w.rng, n, 1.0, 4.0))
    account = int(w.rng.integers(w.config.n_accounts))
    device, ip = w.new_id("device"), w.new_id("ip")
    country = str(w.rng.choice(FAR_COUNTRIES + TRAVEL_COUNTRIES))
    merchants = w.rng.choice(w.merchants.odd, size=n)
    return [
        {**w.base(account), "timestamp_ms": t, "amount": _money(w.rng.uniform(0.5, 5.0)), "channel": "ecommerce",
         "merchant_id": w.merchants.ids[m], "merchant_category": w.merchants.mcc[m], "country": country,
         "ip": ip, "device_id": device}
        for t, m in zip(ts, merchants, strict=True)
    ]


def _account_takeover(w: _World, n: int) -> list[dict[str, Any]]:
    """A victim with history suddenly appears from a new country, device and IP, probes, then cashes out."""
    ts = w.scenario_start(_offsets(w.rng, n, 3.0, 10.0))
    account = w.victim(ts[0])
    home = w.accounts.home[account]
    country = str(w.rng.choice([c for c in FAR_COUNTRIES if c != home]))
    device, ip = w.new_id("device"), w.new_id("ip")
    typical = w.typical_amount(account)
    events = [{**w.base(account), "timestamp_ms": ts[0], "amount": _money(w.rng.uniform(1.0, 10.0)),
               "channel": "ecommerce", "country": country, "ip": ip, "device_id": device,
               **_merchant_fields(w, w.rng.choice(w.merchants.odd))}]
    for t in ts[1:]:
        amount = _money(max(300.0, typical * w.rng.uniform(10.0, 30.0)))
        event = {**w.base(account), "timestamp_ms": t, "amount": amount, "country": country, "ip": ip,
                 "device_id": device}
        if w.rng.random() < 0.5:
            event.update(channel="transfer", counterparty_id=w.new_id("counterparty"))
        else:
            event.update(channel="ecommerce", **_merchant_fields(w, _luxury_merchant(w)))
        events.append(event)
    return events


def _ip_fanout(w: _World, n: int) -> list[dict[str, Any]]:
    """One IP logs in to many distinct accounts within a minute (credential stuffing, a mule farm)."""
    ts = w.scenario_start(_offsets(w.rng, n, 1.0, 3.5))
    accounts = w.rng.choice(w.config.n_accounts, size=n, replace=False)
    ip = w.new_id("ip")
    return [
        {**w.base(int(a)), "timestamp_ms": t, "channel": "ecommerce", "ip": ip, "device_id": w.new_id("device"),
         "amount": _money(w.typical_amount(int(a)) * w.rng.uniform(1.0, 3.0)),
         **_merchant_fields(w, w.rng.choice(w.merchants.odd))}
        for t, a in zip(ts, accounts, strict=True)
    ]


def _bust_out(w: _World, n: int) -> list[dict[str, Any]]:
    """A brand-new account, opened minutes or hours ago, makes large payments straight away."""
    ts = w.scenario_start(_offsets(w.rng, n, 5.0, 15.0))
    account_id = w.new_id("account")
    created = ts[0] - int(w.rng.uniform(5 * 60_000, 6 * HOUR_MS))
    home = str(w.rng.choice(HOME_COUNTRIES))
    device, ip = w.new_id("device"), w.new_id("ip")
    return [
        {"account_id": account_id, "account_created_ms": created, "country": home,
         "currency": COUNTRY_CURRENCY.get(home, "EUR"), "timestamp_ms": t, "amount": _money(w.rng.uniform(800, 4000)),
         "channel": str(w.rng.choice(("card_present", "ecommerce"))), "ip": ip, "device_id": device,
         **_merchant_fields(w, _luxury_merchant(w))}
        for t in ts
    ]


def _new_counterparty_transfer(w: _World, n: int) -> list[dict[str, Any]]:
    """The real customer, talked into it, sends a large transfer to a payee never paid before."""
    (t,) = w.scenario_start([0.0])
    account = w.victim(t)
    amount = _money(max(1500.0, w.typical_amount(account) * w.rng.uniform(15.0, 50.0)))
    return [{**w.base(account), "timestamp_ms": t, "amount": amount, "channel": "transfer",
             "counterparty_id": w.new_id("counterparty"), "ip": w.accounts.ip(account),
             "device_id": w.accounts.device(account)}]


def _amount_anomaly(w: _World, n: int) -> list[dict[str, Any]]:
    """An account with history pays 20-100 times its typical amount at one of its usual merchants."""
    (t,) = w.scenario_start([0.0])
    account = w.victim(t)
    merchant = w.accounts.merchants[account, int(w.rng.integers(w.accounts.merchants.shape[1]))]
    event = {**w.base(account), "timestamp_ms": t, **_merchant_fields(w, merchant),
             "amount": _money(w.typical_amount(account) * w.rng.uniform(20.0, 100.0))}
    if w.rng.random() < 0.5:
        event.update(channel="card_present")
    else:
        event.update(channel="ecommerce", ip=w.accounts.ip(account), device_id=w.accounts.device(account))
    return [event]


def _merchant_fields(w: _World, merchant: int | np.integer) -> dict[str, Any]:
    return {"merchant_id": w.merchants.ids[merchant], "merchant_category": w.merchants.mcc[merchant]}


def _luxury_merchant(w: _World) -> int:
    luxury = w.merchants.shop[np.isin(w.merchants.mcc[w.merchants.shop], LUXURY_MCCS)]
    return int(w.rng.choice(luxury))


# name: (min events, max events, relative frequency, generator). Frequencies keep the one-event scenarios from
# being drowned by the bursts when events are counted.
_GENERATORS: dict[str, tuple[int, int, float, Callable[[_World, int], list[dict[str, Any]]]]] = {
    "card_testing": (10, 20, 1.0, _card_testing),
    "account_takeover": (3, 6, 2.0, _account_takeover),
    "ip_fanout": (15, 25, 0.7, _ip_fanout),
    "bust_out": (2, 5, 2.0, _bust_out),
    "new_counterparty_transfer": (1, 1, 5.0, _new_counterparty_transfer),
    "amount_anomaly": (1, 1, 5.0, _amount_anomaly),
}


def _make_merchants(rng: np.random.Generator, n_accounts: int) -> _Merchants:
    n_shops = int(np.clip(n_accounts // 5, 60, 20_000))
    n_atms = max(10, n_shops // 20)
    n_odd = 25
    mcc = np.concatenate([
        rng.choice(np.array(SHOP_MCCS, dtype=object), size=n_shops, p=SHOP_MCC_WEIGHTS),
        np.full(n_atms, "6011", dtype=object),
        rng.choice(np.array(ODD_MCCS, dtype=object), size=n_odd),
    ])
    mcc[: len(LUXURY_MCCS)] = LUXURY_MCCS  # at least one shop of each luxury category
    ids = np.array([f"m-{i}" for i in range(len(mcc))], dtype=object)
    return _Merchants(ids=ids, mcc=mcc, shop=np.arange(n_shops), atms=np.arange(n_shops, n_shops + n_atms),
                      odd=np.arange(n_shops + n_atms, len(mcc)))


def _make_accounts(rng: np.random.Generator, config: SimulationConfig, start_ms: int,
                   merchants: _Merchants) -> _Accounts:
    n = config.n_accounts
    home = rng.choice(np.array(HOME_COUNTRIES, dtype=object), size=n, p=HOME_WEIGHTS)
    travel = rng.choice(np.array(TRAVEL_COUNTRIES, dtype=object), size=n)
    travel = np.where(travel == home, "PT", travel)
    currency = np.array([COUNTRY_CURRENCY.get(c, "EUR") for c in home], dtype=object)
    channel_p = rng.dirichlet(np.array(CHANNEL_MIX) * 20, size=n)
    # Shop popularity is skewed: a few big grocers, a long tail.
    popularity = 1.0 / np.arange(1, len(merchants.shop) + 1) ** 0.8
    merchant_idx = rng.choice(merchants.shop, size=(n, 8), p=popularity / popularity.sum())
    counterparties = (np.arange(n)[:, None] + rng.integers(1, n, size=(n, 3))) % n
    return _Accounts(
        home=home, travel=travel, currency=currency,
        mu=np.clip(rng.normal(3.3, 0.7, size=n), 1.5, 6.0), sigma=rng.uniform(0.3, 0.7, size=n),
        created_ms=start_ms - rng.uniform(60, 2500, size=n).astype(np.int64) * DAY_MS
        - rng.integers(0, DAY_MS, size=n),
        channel_cum=np.cumsum(channel_p, axis=1), merchants=merchant_idx,
        atm=rng.choice(merchants.atms, size=n), n_devices=rng.integers(1, 3, size=n),
        n_ips=rng.integers(1, 4, size=n), counterparties=counterparties,
        n_counterparties=rng.integers(1, 4, size=n),
    )


def _allocate(rng: np.random.Generator, total: int, n_accounts: int, cap: int) -> np.ndarray:
    """Events per account: skewed activity (some accounts are busy), but never more than `cap` each."""
    weights = rng.gamma(2.0, 1.0, size=n_accounts)
    counts = rng.multinomial(total, weights / weights.sum())
    while (excess := int(np.clip(counts - cap, 0, None).sum())) > 0:
        counts = np.minimum(counts, cap)
        room = weights * (counts < cap)
        counts += rng.multinomial(excess, room / room.sum())
    return counts


def _time_grid(start_ms: int, end_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative activity over the span, hour by hour (for inverse-CDF sampling of times)."""
    first_hour = start_ms // HOUR_MS
    edges = np.arange(first_hour, end_ms // HOUR_MS + 2) * HOUR_MS
    edges = np.clip(edges, start_ms, end_ms)
    edges = np.unique(edges)
    hours = (edges[:-1] // HOUR_MS) % 24
    mass = np.diff(edges) * np.asarray(DAILY_PROFILE)[hours]
    cdf = np.concatenate([[0.0], np.cumsum(mass)])
    return cdf / cdf[-1], edges.astype(np.float64)


def _normal_events(w: _World, n_normal: int) -> tuple[list[tuple[Any, ...]], np.ndarray]:
    """Normal traffic as Event field tuples (without transaction_id), and their timestamps."""
    rng, acc, mer, config = w.rng, w.accounts, w.merchants, w.config
    minutes = (w.end_ms - w.start_ms) / 60_000
    cap = max(MIN_NORMAL_CAP, math.floor(MAX_NORMAL_PER_MINUTE * minutes), math.ceil(n_normal / config.n_accounts))
    counts = _allocate(rng, n_normal, config.n_accounts, cap)
    account = np.repeat(np.arange(config.n_accounts), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(n_normal) - np.repeat(starts, counts)
    # One event per equal slice of the account's activity, jittered: habits without bursts.
    u = (slot + rng.random(n_normal)) / np.repeat(np.maximum(counts, 1), counts)
    cdf, edges = _time_grid(w.start_ms, w.end_ms)
    ts = np.minimum(np.interp(u, cdf, edges).astype(np.int64), w.end_ms)
    w.normal = _Normal(account=account, ts=ts, starts=starts, counts=counts)

    channel = (rng.random(n_normal)[:, None] > acc.channel_cum[account]).sum(axis=1).clip(0, 3)
    amount = np.exp(rng.normal(acc.mu[account], acc.sigma[account]))
    is_atm = channel == 3
    amount[is_atm] = np.maximum(10.0, np.round(amount[is_atm] / 10.0) * 10.0)
    amount = np.round(np.maximum(amount, 0.01), 2)

    merchant = acc.merchants[account, rng.integers(0, acc.merchants.shape[1], size=n_normal)]
    merchant = np.where(rng.random(n_normal) < 0.05, rng.choice(mer.shop, size=n_normal), merchant)
    merchant = np.where(is_atm, acc.atm[account], merchant)
    is_transfer = channel == 2
    merchant_id = np.where(is_transfer, None, mer.ids[merchant])
    mcc = np.where(is_transfer, None, mer.mcc[merchant])

    # Abroad: a few accounts travel, and then only for a small share of their card payments.
    abroad_share = np.where(rng.random(config.n_accounts) < 0.2, rng.uniform(0.02, 0.08, config.n_accounts), 0.0)
    abroad_cap = np.floor(MAX_ABROAD_SHARE * counts).astype(np.int64)
    n_abroad = np.minimum(rng.binomial(counts, abroad_share), abroad_cap)
    abroad = slot < np.repeat(n_abroad, counts)
    abroad_rows = np.flatnonzero(abroad)
    # Trips are contiguous: shift each account's abroad run to a random place in its history.
    shift = np.repeat(rng.integers(0, np.maximum(counts - n_abroad, 0) + 1), counts)
    abroad = np.zeros(n_normal, dtype=bool)
    abroad[abroad_rows + shift[abroad_rows]] = True
    abroad &= channel != 2
    country = np.where(abroad, acc.travel[account], acc.home[account])

    online = (channel == 1) | is_transfer
    device_slot = rng.integers(0, acc.n_devices[account])
    ip_slot = rng.integers(0, acc.n_ips[account])
    device = [f"dev-{a}-{s}" if o else None for a, s, o in zip(account.tolist(), device_slot.tolist(),
                                                               online.tolist(), strict=True)]
    ip_value = (_NORMAL_IP_BASE + account * 4 + ip_slot).tolist()
    ip = [_ip_text(v) if o else None for v, o in zip(ip_value, online.tolist(), strict=True)]
    payee = acc.counterparties[account, rng.integers(0, acc.n_counterparties[account])]
    new_payee = is_transfer & (rng.random(n_normal) < 0.03)
    counterparty: list[str | None] = [None] * n_normal
    for row in np.flatnonzero(is_transfer).tolist():
        counterparty[row] = w.new_id("counterparty") if new_payee[row] else f"acc-{payee[row]}"

    rows = list(zip(
        (f"acc-{a}" for a in account.tolist()), amount.tolist(), ts.tolist(), acc.currency[account].tolist(),
        merchant_id.tolist(), mcc.tolist(), country.tolist(), ip, device,
        np.asarray(CHANNELS, dtype=object)[channel].tolist(), counterparty,
        acc.created_ms[account].tolist(), strict=True,
    ))
    return rows, ts


_FIELDS = ("account_id", "amount", "timestamp_ms", "currency", "merchant_id", "merchant_category", "country",
           "ip", "device_id", "channel", "counterparty_id", "account_created_ms")


def _fraud_events(w: _World, n_fraud: int) -> tuple[list[tuple[Any, ...]], list[str]]:
    """Fraud scenarios until exactly `n_fraud` events: each scenario once first (when the budget allows)."""
    rows: list[tuple[Any, ...]] = []
    scenarios: list[str] = []
    first_round = [str(s) for s in w.rng.permutation(SCENARIOS)]
    while len(rows) < n_fraud:
        budget = n_fraud - len(rows)
        fitting = [s for s in SCENARIOS if _GENERATORS[s][0] <= budget]
        pending = [s for s in first_round if s in fitting]
        if pending:
            name = pending[0]
            first_round.remove(name)
            # Leave room for the scenarios not seen yet, so a small budget still shows most of them.
            budget -= sum(_GENERATORS[s][0] for s in pending[1:])
        else:
            weights = np.array([_GENERATORS[s][2] for s in fitting])
            name = fitting[int(w.rng.choice(len(fitting), p=weights / weights.sum()))]
        low, high, _, generate = _GENERATORS[name]
        size = max(low, min(int(w.rng.integers(low, high + 1)), budget))
        for event in generate(w, size):
            rows.append(tuple(event.get(f) for f in _FIELDS))
            scenarios.append(name)
    return rows, scenarios


def simulate(config: SimulationConfig) -> tuple[list[Event], list[GroundTruth]]:
    """Simulate `config.n_events` events sorted by time, and their labels in the same order."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    start_ms = int(config.start.timestamp() * 1000)
    end_ms = start_ms + int(config.duration.total_seconds() * 1000)
    merchants = _make_merchants(rng, config.n_accounts)
    accounts = _make_accounts(rng, config, start_ms, merchants)
    n_fraud = round(config.fraud_rate * config.n_events)
    world = _World(rng=rng, config=config, accounts=accounts, merchants=merchants,
                   normal=_Normal(np.empty(0), np.empty(0), np.empty(0), np.empty(0)),
                   start_ms=start_ms, end_ms=end_ms)
    normal_rows, normal_ts = _normal_events(world, config.n_events - n_fraud)
    fraud_rows, scenarios = _fraud_events(world, n_fraud)
    ts = np.concatenate([normal_ts, np.array([r[2] for r in fraud_rows], dtype=np.int64)])
    order = np.argsort(ts, kind="stable").tolist()
    rows = normal_rows + fraud_rows
    n_normal = len(normal_rows)
    width = max(7, len(str(config.n_events)))
    events: list[Event] = []
    truth: list[GroundTruth] = []
    for position, index in enumerate(order):
        tx_id = f"tx-{config.seed}-{position:0{width}d}"
        events.append(Event(tx_id, *rows[index]))
        if index < n_normal:
            truth.append(GroundTruth(tx_id, 0, NORMAL))
        else:
            truth.append(GroundTruth(tx_id, 1, scenarios[index - n_normal]))
    return events, truth
