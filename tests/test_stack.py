"""The local stack: real Kafka (both Python clients), topics with their partitions, Redis, Prometheus."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from typer.testing import CliRunner

from fraudmon.cli import app
from fraudmon.core.config import load_settings
from fraudmon.core.errors import StackError
from fraudmon.tools.stack import LocalStack
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_spec_topics_exist_with_configured_partitions(kafka_bootstrap, settings):
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics(settings.topics.all())}
    finally:
        admin.close()
    assert set(described) == set(settings.topics.all())
    for topic in described.values():
        assert topic["error_code"] == 0
        assert len(topic["partitions"]) == settings.topics.partitions


def test_kafka_python_round_trip(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    sent = [f"message-{i}".encode() for i in range(100)]
    for i, value in enumerate(sent):
        producer.send(topic, value=value, key=f"acc-{i % 7}".encode())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000,
        group_id="round-trip",
    )
    received = [record.value for record in consumer]
    consumer.close()
    assert sorted(received) == sorted(sent)


def test_aiokafka_round_trip_keeps_per_key_order(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=6)

    async def run() -> list[tuple[bytes, bytes]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for i in range(200):
                await producer.send(topic, value=json.dumps({"n": i}).encode(), key=f"acc-{i % 5}".encode())
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id="aio-round-trip"
        )
        await consumer.start()
        records: list[tuple[bytes, bytes]] = []
        try:
            while len(records) < 200:
                batch = await consumer.getmany(timeout_ms=5000)
                if not batch:
                    break
                for partition_records in batch.values():
                    records.extend((r.key, r.value) for r in partition_records)
        finally:
            await consumer.stop()
        return records

    records = asyncio.run(run())
    assert len(records) == 200
    by_key: dict[bytes, list[int]] = {}
    for key, value in records:
        by_key.setdefault(key, []).append(json.loads(value)["n"])
    assert all(numbers == sorted(numbers) for numbers in by_key.values())


def test_redis_and_prometheus_answer(redis_url, prometheus_url):
    assert redis.Redis.from_url(redis_url).ping()
    with urllib.request.urlopen(f"{prometheus_url}/-/ready", timeout=5) as response:
        assert response.status == 200


def test_up_is_idempotent_and_status_reports_each_service(local_stack):
    local_stack.up()
    statuses = {s.name: s for s in local_stack.status()}
    assert set(statuses) == {"kafka", "redis", "prometheus"}
    assert all(s.running and s.pid for s in statuses.values())
    assert statuses["kafka"].address.endswith(str(local_stack.stack.kafka_port))


def test_missing_java_or_maven_says_what_to_install(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("java") is None
    with pytest.raises(StackError, match=r"Java 17 \(apt-get install openjdk-17-jre-headless\)") as info:
        LocalStack(settings).install()
    assert "Maven (apt-get install maven)" in str(info.value)


def test_stack_redis_keeps_an_append_only_file_fsynced_every_second(redis_url):
    config = redis.Redis.from_url(redis_url, decode_responses=True).config_get("append*")
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"


def _status_cli(config: Path) -> tuple[dict[str, list[str]], str, int, float]:
    """`fraudmon stack status` in process: each service's line split in words, the output, exit code, seconds."""
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["stack", "status", "--config", str(config)])
    elapsed = time.perf_counter() - started
    lines = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    return lines, result.output, result.exit_code, elapsed


@pytest.mark.slow
def test_status_tells_up_crashed_down_and_foreign_apart_within_a_second(tmp_path: Path) -> None:
    ports = {f"{name}_port": free_port() for name in ("kafka", "kafka_controller", "redis", "prometheus")}
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump({"stack": {"data_dir": str(tmp_path / "stack"), **ports}}))
    stack = LocalStack(load_settings(config, environ={}))
    try:
        stack.up(services=("redis", "prometheus"))
        lines, output, code, elapsed = _status_cli(config)
        assert lines["redis"][1] == "up" and lines["prometheus"][1] == "up", output
        assert f"pid {stack.status()[1].pid}," in output
        assert lines["kafka"][1] == "down" and code == 1 and elapsed < 1.0, (output, elapsed)

        redis_pid = next(s.pid for s in stack.status() if s.name == "redis")
        os.kill(redis_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while next(s.state for s in stack.status() if s.name == "redis") != "crashed":
            assert time.monotonic() < deadline, "redis still looks alive after SIGKILL"
            time.sleep(0.1)
        lines, output, code, elapsed = _status_cli(config)
        assert lines["redis"][1] == "crashed" and str(stack.log_path("redis")) in output, output
        assert f"pid {redis_pid} is gone" in output and code == 1 and elapsed < 1.0, (output, elapsed)
    finally:
        stack.down()
    lines, output, code, elapsed = _status_cli(config)
    assert [lines[s][1] for s in ("kafka", "redis", "prometheus")] == ["down"] * 3, output
    assert elapsed < 1.0, elapsed

    with socket.socket() as listener:  # something that is not ours on the configured Kafka port
        listener.bind(("127.0.0.1", ports["kafka_port"]))
        listener.listen()
        lines, output, code, elapsed = _status_cli(config)
    assert lines["kafka"][1] == "foreign" and "another program listens on this port" in output, output
    assert [lines[s][1] for s in ("redis", "prometheus")] == ["down"] * 2 and elapsed < 1.0, (output, elapsed)
