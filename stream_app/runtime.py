"""Building the engine from settings (the start-up checks) and hot-reloading the model and the rules."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from fraudmon.core.config import Settings
from fraudmon.core.errors import ConfigError, FraudMonitorError, ModelError, StateUnavailable
from fraudmon.core.events import EventLimits
from stream_app.engine import DecisionEngine
from stream_app.metrics import WorkerMetrics
from stream_app.rules import RuleSet, load_rules
from stream_app.scoring import load_model
from stream_app.state import StateStore, make_state_store

log = logging.getLogger(__name__)


def build_engine(
    settings: Settings, metrics: WorkerMetrics | None = None, store: StateStore | None = None,
    limits: EventLimits | None = None, rules: RuleSet | None = None,
) -> DecisionEngine:
    """Load and check the model, its card and the rules (`rules`, or the configured file); raise a
    `FraudMonitorError` saying what to fix."""
    model = load_model(settings.resolve(settings.worker.model_path))
    rules = rules if rules is not None else load_rules(settings.resolve(settings.worker.rules_path))
    shadow_path = settings.worker.shadow_model_path
    shadow = load_model(settings.resolve(shadow_path)) if shadow_path else None
    return DecisionEngine(
        model,
        rules,
        store if store is not None else make_state_store(settings),
        metrics=metrics,
        latency_budget_ms=settings.worker.latency_budget_ms,
        retry_after_s=settings.worker.redis_retry_after_s,
        limits=limits or event_limits(settings),
        max_state_backlog=settings.worker.max_state_backlog,
        shadow=shadow,
        drift_window=settings.worker.drift_window,
    )


def event_limits(settings: Settings) -> EventLimits:
    """The event gate's limits from the `events:` settings."""
    events = settings.events
    return EventLimits(
        max_message_bytes=events.max_message_bytes, max_amount=events.max_amount,
        min_timestamp_ms=int(events.earliest_timestamp.timestamp() * 1000),
        max_future_ms=int(events.max_future_s * 1000), max_features=events.max_features,
        max_feature_abs=events.max_feature_abs,
    )


def check_ports(settings: Settings) -> None:
    """The worker's /metrics port (and Faust's web port, when on) must be free; say which setting to change."""
    ports = {"worker.metrics_port (FRAUDMON_METRICS_PORT)": (settings.worker.metrics_address,
                                                             settings.worker.metrics_port),
             "worker.web_port (FRAUDMON_WORKER__WEB_PORT, 0 turns it off)": (settings.worker.web_bind,
                                                                             settings.worker.web_port)}
    for setting, (address, port) in ports.items():
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as exc:
                raise ConfigError(f"port {port} is not free ({exc.strerror}): another worker or program uses it; "
                                  f"set {setting} to a free port") from None


def wait_for_kafka(bootstrap_servers: str, retry_s: float = 2.0, give_up_s: float | None = None) -> None:
    """Block until one bootstrap server accepts a TCP connection, logging each failed attempt."""
    started = time.monotonic()
    hosts = [h.strip().rpartition(":") for h in bootstrap_servers.split(",") if h.strip()]
    attempt = 0
    while True:
        for host, _, port in hosts:
            try:
                with socket.create_connection((host or "127.0.0.1", int(port)), timeout=2):
                    if attempt:
                        log.info("Kafka at %s answers now", bootstrap_servers)
                    return
            except OSError as exc:
                error = exc
        attempt += 1
        log.warning("Kafka at %s unreachable (%s); retrying in %.0fs (attempt %d)",
                    bootstrap_servers, error, retry_s, attempt, extra={"dependency": "kafka"})
        if give_up_s is not None and time.monotonic() - started > give_up_s:
            raise FraudMonitorError(
                f"Kafka at {bootstrap_servers} did not answer for {give_up_s:.0f}s ({error}): start it "
                "(`fraudmon stack up` for the local stack) or set kafka.bootstrap_servers (FRAUDMON_KAFKA_BOOTSTRAP)")
        time.sleep(retry_s)


def wait_for_state_store(store: StateStore, retry_s: float = 2.0, give_up_s: float | None = None) -> None:
    """Block until the rule state store answers, logging each failed attempt."""
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            store.connect()
        except StateUnavailable as exc:
            attempt += 1
            log.warning("rule state store unreachable (%s); retrying in %.0fs (attempt %d)", exc, retry_s, attempt,
                        extra={"dependency": "redis"})
            if give_up_s is not None and time.monotonic() - started > give_up_s:
                raise StateUnavailable(
                    f"{exc}; gave up after {give_up_s:.0f}s: start Redis (`fraudmon stack up` for the local stack) "
                    "or set redis.url (FRAUDMON_REDIS_URL)") from None
            time.sleep(retry_s)
            continue
        if attempt:
            log.info("rule state store answers now")
        return


@dataclass
class _Watched:
    paths: tuple[Path, ...]
    signature: tuple[tuple[float, int], ...]


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[float, int], ...]:
    result = []
    for path in paths:
        try:
            stat = path.stat()
            result.append((stat.st_mtime, stat.st_size))
        except FileNotFoundError:
            result.append((0.0, -1))
    return tuple(result)


def _with_card(model_path: Path) -> tuple[Path, Path]:
    return model_path, model_path.with_suffix(".json")


class HotReloader:
    """Swaps in a changed model (ONNX + card) or rules file after validating it; keeps the old one otherwise."""

    def __init__(self, engine: DecisionEngine, model_path: Path, rules_path: Path,
                 shadow_path: Path | None = None) -> None:
        self.engine = engine
        self.model_path = model_path
        self.shadow_path = shadow_path
        self._model = _Watched(_with_card(model_path), _signature(_with_card(model_path)))
        self._rules = _Watched((rules_path,), _signature((rules_path,)))
        shadow = _with_card(shadow_path) if shadow_path else ()
        self._shadow = _Watched(shadow, _signature(shadow))

    def check(self) -> list[str]:
        """Reload what changed since the last check; return what happened, e.g. `["rules: ok"]`."""
        events = []
        if self._changed(self._rules):
            events.append(self._reload("rules", self._swap_rules))
        if self._changed(self._model):
            events.append(self._reload("model", self._swap_model))
        if self.shadow_path and self._changed(self._shadow):
            events.append(self._reload("shadow", self._swap_shadow))
        return events

    def _checked_model(self, path: Path):
        model = load_model(path)
        problem = self.engine.fit_problem(model)
        if problem:
            raise ModelError(problem)
        return model

    def _swap_model(self) -> None:
        self.engine.set_model(self._checked_model(self.model_path))

    def _swap_shadow(self) -> None:
        self.engine.set_shadow(self._checked_model(self.shadow_path))

    def _swap_rules(self) -> None:
        self.engine.rules = load_rules(self._rules.paths[0])

    @staticmethod
    def _changed(watched: _Watched) -> bool:
        current = _signature(watched.paths)
        if current == watched.signature:
            return False
        watched.signature = current
        return True

    def _reload(self, kind: str, swap) -> str:
        try:
            swap()
        except FraudMonitorError as exc:
            self.engine.metrics.reloads.labels(artifact=kind, result="refused").inc()
            log.error("hot reload of the %s refused, the previous one keeps serving: %s", kind, exc)
            return f"{kind}: refused ({exc})"
        self.engine.metrics.reloads.labels(artifact=kind, result="ok").inc()
        if kind == "model":
            log.info("model %s (%s) now serving", self.engine.model.name, self.engine.model.version)
        elif kind == "shadow":
            log.info("shadow model %s (%s) now scored", self.engine.shadow.name, self.engine.shadow.version)
        else:
            log.info("rules reloaded: %d rules", len(self.engine.rules.rules))
        return f"{kind}: ok"
