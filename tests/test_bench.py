"""`fraudmon bench` on the session's real Kafka and Redis: a small run of every system, checked for structure and
sanity (everything drained, clocks from the broker, percentiles ordered, files written), never for speed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient
from typer.testing import CliRunner

from fraudmon.cli import app
from fraudmon.core.config import Settings
from fraudmon.tools import bench
from fraudmon.tools.bench import SYSTEMS, lag_after, missing, report_lines, run_bench

pytestmark = pytest.mark.integration


def _bench_leftovers(settings: Settings) -> tuple[list[str], list[bytes]]:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        topics = [name for name in admin.list_topics() if name.startswith("bench-")]
    finally:
        admin.close()
    keys = list(redis.Redis.from_url(settings.redis.url).scan_iter(f"{settings.redis.key_prefix}bench-*"))
    return topics, keys


@pytest.mark.slow
def test_small_run_of_every_system(settings: Settings, local_stack, tmp_path: Path) -> None:
    report = run_bench(settings, events=3000, rates=[300], seconds=3, out_dir=tmp_path, systems=SYSTEMS,
                       max_share=0, overload=((1.5, 2.0), (0.5, 3.0)))

    for system, module in (("confluent", "confluent_kafka"), ("quix", "quixstreams")):
        if importlib.util.find_spec(module) is None:  # skipped and said so, never a crash
            assert "not installed" in report.skipped[system]
    assert set(report.skipped) <= {"confluent", "quix"}
    ran = [row.system for row in report.throughput]
    assert ran == [s for s in ("worker2", "aiokafka", "faust", "confluent", "quix", "worker")
                   if s not in report.skipped]
    for row in report.throughput:
        assert row.drained and row.outputs == 3000, row
        assert row.events_per_s > 0 and row.first_to_last_s > 0, row
        assert row.exit_code is None, (tmp_path / f"bench-{row.system}.log").read_text()[-2000:]
    worker = next(row for row in report.throughput if row.system == "worker")
    assert worker.cpu_us_per_event is not None and worker.cpu_us_per_event > 0
    assert worker.peak_rss_mb is not None and worker.peak_rss_mb > 20
    assert worker.degraded is not None
    two = next(row for row in report.throughput if row.system == "worker2")  # `fraudmon worker --processes 2`
    assert two.cpu_us_per_event is not None and two.degraded is not None
    assert two.peak_rss_mb > 2 * 20, "the CPU and memory of both workers (the process group) are counted"

    assert [(row.system, row.rate) for row in report.latency] == [("worker", 300), ("aiokafka", 300), ("faust", 300)]
    for row in report.latency:
        assert row.joined == row.events == 900, row
        assert row.achieved_rate > 0
        assert 0 <= row.p50_ms <= row.p95_ms <= row.p99_ms <= row.max_ms, row
        assert (row.degraded is not None) == (row.system == "worker")
        assert 0 < row.machine_busy <= 1, "the share of all cores busy while the load was produced"
        assert row.cpu_us_per_event is not None and row.cpu_us_per_event > 0, "the system's own CPU per event"

    overload = report.overload  # the worker under 150% of its drain maximum for 2 s, then 50% for 3 s
    assert overload.burst_rate == round(worker.events_per_s * 1.5)
    assert overload.after_rate == round(worker.events_per_s / 2)
    assert overload.events == overload.burst_rate * 2 + overload.after_rate * 3
    assert (overload.lost, overload.decided, overload.degraded) == (0, overload.events, 0), overload
    assert overload.peak_lag > 0 and overload.recovery_s is not None and overload.recovery_s >= 0, overload

    data = json.loads((tmp_path / "bench.json").read_text())
    assert set(data["overload"]) >= {"degraded", "lost", "peak_lag", "recovery_s"}
    assert data["cpu_count"] and data["partitions"] == settings.topics.partitions and data["events"] == 3000
    assert data["broker_on_this_host"] is True
    generator = "confluent-kafka" if importlib.util.find_spec("confluent_kafka") else "kafka-python"
    assert data["load_generator"] == generator and f"load generator ({generator})" in data["depends_on"]
    assert all(row["drained"] for row in data["throughput"])
    assert "cores" in data["depends_on"] and "3,000 events" in data["depends_on"]
    assert len(data["host_reference_ms"]) == 2 and all(ms > 0 for ms in data["host_reference_ms"])
    assert "ms for the reference workload" in data["depends_on"]
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = "\n".join(report_lines(report))
    assert "| worker |" in table and "depends on:" in table and "overload (the worker:" in table

    assert _bench_leftovers(settings) == ([], [])  # topics and the worker's rule state are removed


def test_a_peer_whose_library_is_missing_is_skipped(settings: Settings, local_stack, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    absent = ("quixstreams", "confluent_kafka")  # without the bench extra: kafka-python loads the topics
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None if name in absent else real(name))
    assert missing("quix", settings) == "quixstreams is not installed (pip install 'fraud-monitor[bench]')"

    report = run_bench(settings, events=20, rates=[10], seconds=1, out_dir=tmp_path, systems=["quix"])

    assert report.throughput == [] and report.latency == []
    assert "quix" in report.skipped
    assert any(line.startswith("skipped quix: quixstreams is not installed") for line in report_lines(report))
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["skipped"] == report.skipped and data["load_generator"] == "kafka-python"


def test_the_command_documents_its_options_and_refuses_unknown_systems() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--events", "--rates", "--seconds", "--systems", "--max-share", "--out-dir"):
        assert option in result.output
    assert "--processes" not in result.output

    result = runner.invoke(app, ["bench", "--systems", "worker,flink"])
    assert result.exit_code == 2 and "unknown flink" in result.output


def test_lag_is_read_off_the_append_times():
    """(input, output) append times in ms: the most events appended and not yet decided at once, and how long
    after the burst's last input no event older than 100 ms is left undecided."""
    times = [(0, 50), (100, 160), (200, 500), (300, 510), (400, 520), (600, 620)]
    assert lag_after(times, burst_end_ms=300) == (3, 220)
    assert lag_after([(0, 5), (100, None), (200, 205)], burst_end_ms=200) == (2, None), "an undecided event: never"
    assert lag_after([(0, 5), (10, 12)], burst_end_ms=10) == (1, 0)
    assert lag_after([(0, 305)], burst_end_ms=150) == (1, 160), "caught up with the last decision"
