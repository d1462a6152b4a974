"""Session fixtures: a real local stack (Kafka, Redis, Prometheus) on free ports, apart from the demo's."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator

import pytest

from fraudmon.config import Settings, load_settings
from fraudmon.stack import LocalStack, create_topics


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def worker_metrics_port() -> int:
    """The port the session's worker serves /metrics on (Prometheus scrapes it)."""
    return free_port()


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, worker_metrics_port: int) -> Settings:
    """Settings for the test stack: its own ports and data dir, shared jar cache."""
    base = load_settings(environ={})
    data_dir = tmp_path_factory.mktemp("stack")
    stack = base.stack.model_copy(update={
        "data_dir": str(data_dir), "kafka_port": free_port(), "kafka_controller_port": free_port(),
        "redis_port": free_port(), "prometheus_port": free_port(),
    })
    return base.model_copy(update={
        "stack": stack,
        "kafka": base.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{stack.kafka_port}"}),
        "redis": base.redis.model_copy(update={"url": f"redis://127.0.0.1:{stack.redis_port}/0"}),
        "worker": base.worker.model_copy(update={"metrics_port": worker_metrics_port}),
    })


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
