"""Session fixtures: a real local stack (Kafka, Redis, Prometheus) on free ports, apart from the demo's."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fraudmon.core.config import Settings, load_settings
from fraudmon.tools.stack import LocalStack, create_topics, free_port, isolated_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CREDITCARD = PROJECT_ROOT / "data" / "creditcard_sample.csv.gz"
"""The sample of the public card-holder data shipped in the repository (data/README.md)."""
needs_creditcard = pytest.mark.skipif(not CREDITCARD.exists(), reason=f"{CREDITCARD} is not here")


@pytest.fixture(scope="session")
def worker_metrics_port() -> int:
    """The port the session's worker serves /metrics on (Prometheus scrapes it)."""
    return free_port()


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, worker_metrics_port: int) -> Settings:
    """Settings for the test stack: its own ports and data dir, shared jar cache."""
    return isolated_settings(load_settings(environ={}), tmp_path_factory.mktemp("stack"), worker_metrics_port)


@pytest.fixture(scope="session")
def local_stack(settings: Settings, worker_metrics_port: int) -> Iterator[LocalStack]:
    stack = LocalStack(settings, worker_metrics_ports=(worker_metrics_port,))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_stack: LocalStack, settings: Settings) -> str:
    return settings.kafka.bootstrap_servers


@pytest.fixture(scope="session")
def redis_url(local_stack: LocalStack, settings: Settings) -> str:
    return settings.redis.url


@pytest.fixture(scope="session")
def prometheus_url(local_stack: LocalStack, settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.stack.prometheus_port}"


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """Create a fresh, uniquely named topic: `make_topic(partitions=6) -> name`."""

    def make(partitions: int = 6, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        create_topics(kafka_bootstrap, [name], partitions)
        return name

    return make


class WorkerProcess:
    """A real `fraudmon worker` subprocess on its own topics and consumer group."""

    def __init__(self, settings: Settings, topics: dict[str, str], group: str, metrics_port: int,
                 extra_env: dict[str, str], log_path) -> None:
        from fraudmon.tools.harness import start_worker

        self.metrics_port = metrics_port
        self.log_path = log_path
        env = {
            "FRAUDMON_TOPICS__TRANSACTIONS": topics["transactions"],
            "FRAUDMON_TOPICS__SCORES": topics["scores"],
            "FRAUDMON_TOPICS__FLAGGED": topics["flagged"],
            "FRAUDMON_TOPICS__DEAD_LETTER": topics["dead_letter"],
            "FRAUDMON_TOPICS__VERDICTS": topics.get("verdicts", f"verdicts-{topics['transactions']}"),
            "FRAUDMON_WORKER__APP_ID": group,
            "FRAUDMON_METRICS_PORT": str(metrics_port),
            "FRAUDMON_WORKER__RELOAD_INTERVAL_S": "0.5",
            # Rule semantics are under test here, on a 2-core machine shared with Kafka, Redis and the test
            # itself: a Redis timeout at a quarter second, not 25 ms, so a CPU hiccup does not degrade a batch.
            # The degraded path has its own test (Redis stopped).
            "FRAUDMON_LATENCY_BUDGET_MS": "500",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **extra_env,
        }
        self.process = start_worker(settings, log_path, env)

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        from fraudmon.tools.harness import stop_process

        stop_process(self.process)


@pytest.fixture
def worker_topics(kafka_bootstrap: str) -> dict[str, str]:
    """Fresh input/output topics for one worker test."""
    run = uuid.uuid4().hex[:8]
    topics = {name: f"{name}-{run}" for name in ("transactions", "scores", "flagged", "dead_letter", "verdicts")}
    create_topics(kafka_bootstrap, list(topics.values()), 6)
    return topics


@pytest.fixture
def start_worker(settings: Settings, tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """`start_worker(topics, group=None, metrics_port=None, wait=True, **env) -> WorkerProcess`; stopped after."""
    from fraudmon.tools.harness import wait_for_group

    started: list[WorkerProcess] = []

    def start(topics: dict[str, str], group: str | None = None, metrics_port: int | None = None,
              wait: bool = True, env: dict[str, str] | None = None) -> WorkerProcess:
        group = group or f"test-worker-{uuid.uuid4().hex[:8]}"
        worker = WorkerProcess(settings, topics, group, metrics_port or free_port(), env or {},
                               tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        if wait:
            try:
                wait_for_group(settings, group, timeout_s=90)
            except Exception as exc:
                raise AssertionError(f"worker did not join its group ({exc}); log:\n{worker.log()[-3000:]}") from None
        return worker

    yield start
    for worker in started:
        worker.stop()
