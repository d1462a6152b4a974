"""`fraudmon demo`: a bounded end-to-end run on the local stack, with a summary against ground truth.

Brings the stack up, creates the run's own topics, starts a worker on them, warms it up, produces a labelled
simulated stream (plus some malformed events), reads the decisions, flags and dead letters back, prints what
happened, and stops and deletes what it started.

The run's topics carry the broker's append time (`message.timestamp.type=LogAppendTime`, as `fraudmon bench`'s),
so the latency is the decision's append time minus its event's: the broker's clock at both ends, which includes
everything the worker and its clients do. Before the clock counts, a warm-up stream of a few seconds goes through
the same worker and topics (its rule state deleted afterwards): the first events of a cold stack then meet a
broker, a worker and a Redis that have each served a request, as they do in service.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from kafka import KafkaConsumer, TopicPartition

from fraudmon.core import rates
from fraudmon.core.config import Settings
from fraudmon.core.errors import FraudMonitorError
from fraudmon.tools.harness import (
    OutputReader,
    delete_state,
    run_state_prefix,
    start_worker,
    stop_process,
    wait_for_group,
)
from fraudmon.tools.stack import LocalStack
from stream_app.replay import flags_by_reason, recall_by_scenario


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarise(
    collector: OutputReader, truth: dict[str, tuple[int, str]], produced: int, malformed: int,
    started_s: float, appended_s: dict[str, float],
) -> dict:
    """Counts, actions, flag reasons, precision/recall (overall and per scenario), dead letters and latency
    (each decision's append time minus its event's, `appended_s`)."""
    first = collector.first_decisions()
    decisions = [value for value, _ in first]
    latencies_ms = [(published - appended_s[value["transaction_id"]]) * 1000.0 for value, published in first
                    if value["transaction_id"] in appended_s]
    flagged = [d for d in decisions if d["decision"] == "flag"]
    tp = sum(1 for d in flagged if truth.get(d["transaction_id"], (0, ""))[0] == 1)
    frauds = sum(1 for label, _ in truth.values() if label == 1)
    last_published = max((published for _, published in first), default=started_s)
    return {
        "produced_valid": produced,
        "produced_malformed": malformed,
        "decisions": len(decisions),
        "duplicate_decisions": collector.duplicates,
        "flags": len(flagged),
        "actions": dict(Counter(d["action"] for d in decisions)),
        "flagged_topic_messages": len(collector.flagged),
        "flags_by_reason": flags_by_reason(decisions),
        "precision": rates.precision(tp, len(flagged)),
        "recall": rates.recall(tp, frauds),
        "recall_by_scenario": recall_by_scenario(decisions, truth),
        "dead_letters": len(collector.dead_letters),
        "dead_letter_reasons": dict(Counter(letter["error"].split(":")[0] for letter in collector.dead_letters)),
        "degraded": sum(1 for d in decisions if d["degraded"]),
        "end_to_end_ms": {q: round(percentile(latencies_ms, q), 2) for q in (50, 95, 99)},
        "end_to_end_max_ms": round(max(latencies_ms, default=float("nan")), 2),
        "processing_ms": {q: round(percentile([d["latency_ms"] for d in decisions], q), 2) for q in (50, 99)},
        "throughput_per_s": round(len(decisions) / max(1e-9, last_published - started_s), 1),
    }


def print_summary(summary: dict, out_dir: Path, alerts_url: str) -> None:
    print("\n=== fraud-monitor demo summary ===")
    print(f"events produced      {summary['produced_valid']} valid + {summary['produced_malformed']} malformed")
    print(f"decisions            {summary['decisions']} (duplicates {summary['duplicate_decisions']})")
    actions = summary["actions"]
    print(f"actions              allow {actions.get('allow', 0)}, review {actions.get('review', 0)}, block "
          f"{actions.get('block', 0)} (review and block on flagged-transactions: {summary['flagged_topic_messages']})")
    for reason, count in summary["flags_by_reason"].items():
        print(f"  {reason:<26} {count}")
    print(f"precision / recall   {rates.shown(summary['precision'])} / {rates.shown(summary['recall'])}")
    for name, entry in summary["recall_by_scenario"].items():
        print(f"  recall {name:<19} {rates.shown(entry['recall'], 2)}  ({entry['flagged']}/{entry['frauds']})")
    print(f"dead letters         {summary['dead_letters']} {summary['dead_letter_reasons']}")
    print(f"degraded decisions   {summary['degraded']}")
    e2e = summary["end_to_end_ms"]
    print(f"end-to-end latency   p50 {e2e[50]} ms, p95 {e2e[95]} ms, p99 {e2e[99]} ms, max "
          f"{summary['end_to_end_max_ms']} ms (the broker's append time of the event to that of its decision, after "
          "a warm-up)")
    print(f"throughput           {summary['throughput_per_s']} decisions/s")
    print(f"\nfull summary: {out_dir / 'summary.json'}; worker log: {out_dir / 'worker.log'}")
    print("\nnext: `fraudmon demo --keep-running` leaves Kafka, Redis and Prometheus up to look around "
          f"(alerts at {alerts_url});\n      `fraudmon stack up` + `fraudmon worker` + "
          "`fraudmon produce --simulate --rate 500` runs it by hand;\n      `fraudmon simulate -o ev.jsonl --truth "
          "truth.csv` then `fraudmon replay ev.jsonl --truth truth.csv` backtests rules offline.")


WARM_UP_S = 3.0  # seconds of warm-up traffic at the demo's rate before its clock counts


def warm_up(settings: Settings, topics: dict[str, str], rate: float, seed: int, state_prefix: str) -> None:
    """Send `WARM_UP_S` seconds of simulated events at `rate` through the worker, wait for their decisions, then
    delete the rule state they left (their accounts may be the demo's)."""
    from fraudmon.tools.produce import produce_events
    from training.simulate import SimulationConfig, simulate

    n_events = max(100, int(rate * WARM_UP_S))
    events, _ = simulate(SimulationConfig(n_events=n_events, n_accounts=max(200, n_events // 2),
                                          start=datetime.now(UTC), duration=timedelta(seconds=WARM_UP_S),
                                          seed=seed + 1))
    print(f"demo: warming up with {n_events} events ({WARM_UP_S:.0f} s; not counted) ...")
    reader = OutputReader(settings, [topics["scores"]], topics["dlq"]).start()
    try:
        produce_events(settings, events, topic=topics["transactions"], rate=rate, live_time=True)
        if not reader.wait_for(lambda seen: len(seen.decisions) >= n_events, 60):
            raise FraudMonitorError("the worker did not decide the warm-up events within 60 s")
    finally:
        reader.stop()
    delete_state(settings, state_prefix)


def append_times(settings: Settings, topic: str, wanted: set[str]) -> dict[str, float]:
    """The broker's append time (s) of each event of `topic` whose transaction id is in `wanted`."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False,
                             **settings.kafka.client_options())
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends, appended = consumer.end_offsets(partitions), {}
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                for record in records:
                    try:
                        tx = orjson.loads(record.value).get("transaction_id")
                    except (orjson.JSONDecodeError, AttributeError):
                        continue  # a malformed message
                    if tx in wanted:
                        appended.setdefault(tx, record.timestamp / 1000.0)
        return appended
    finally:
        consumer.close()


def run_demo(
    settings: Settings, *, duration_s: float, rate: float, malformed: int, seed: int, keep_running: bool,
    out_dir: Path,
) -> dict:
    """Run the demo end to end; return the summary (also written to `out_dir/summary.json`)."""
    from fraudmon.core.eventfiles import write_ground_truth
    from fraudmon.tools.bench import create_log_append_topics, delete_topics
    from fraudmon.tools.produce import produce_events
    from training.simulate import SimulationConfig, simulate

    out_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(settings)
    was_running = all(s.running for s in stack.status())
    print("demo: bringing up Kafka, Redis and Prometheus ...")
    stack.up()
    alerts_url = stack.ui_url("alerts")
    model_path = settings.resolve(settings.worker.model_path)
    if not model_path.exists():
        raise FraudMonitorError(f"no model at {model_path}: run `fraudmon train --simulate 100000` first")

    n_events = int(rate * duration_s)
    events, truth = simulate(SimulationConfig(
        n_events=n_events, n_accounts=max(200, n_events // 2), start=datetime.now(UTC),
        duration=timedelta(seconds=duration_s), seed=seed,
    ))
    write_ground_truth(out_dir / "truth.csv", truth)
    truth_map = {t.transaction_id: (t.label, t.scenario) for t in truth}

    run = uuid.uuid4().hex[:8]
    topics = {name: f"demo-{run}-{name}" for name in ("transactions", "scores", "flagged", "dlq")}
    group, state_prefix = f"demo-{run}", run_state_prefix(settings, "demo")
    create_log_append_topics(settings, list(topics.values()))
    print("demo: starting the worker ...")
    worker = start_worker(settings, out_dir / "worker.log", {
        "FRAUDMON_TOPICS__TRANSACTIONS": topics["transactions"], "FRAUDMON_TOPICS__SCORES": topics["scores"],
        "FRAUDMON_TOPICS__FLAGGED": topics["flagged"], "FRAUDMON_TOPICS__DEAD_LETTER": topics["dlq"],
        "FRAUDMON_WORKER__APP_ID": group, "FRAUDMON_REDIS__KEY_PREFIX": state_prefix})
    try:
        wait_for_group(settings, group)
        warm_up(settings, topics, rate, seed, state_prefix)
        collector = OutputReader(settings, [topics["scores"]], topics["dlq"], topics["flagged"]).start()
        started = time.time()
        print(f"demo: producing {n_events} simulated events at {rate:.0f}/s plus {malformed} malformed ...")
        produce_events(
            settings, events, topic=topics["transactions"], rate=rate, live_time=True, malformed=malformed,
            progress=True,
        )
        complete = collector.wait_for(
            lambda seen: len(seen.decisions) >= n_events and len(seen.dead_letters) >= malformed, 60
        )
        if worker.poll() is not None:
            raise FraudMonitorError(f"the worker exited with {worker.returncode}; see {out_dir / 'worker.log'}")
        collector.stop()
        summary = summarise(collector, truth_map, n_events, malformed, started,
                            append_times(settings, topics["transactions"], set(truth_map)))
        summary["complete"] = complete
    finally:
        stop_process(worker)
        delete_state(settings, state_prefix)
        delete_topics(settings, [*topics.values(), f"{group}-__assignor-__leader"])  # the last one is Faust's
        if not keep_running and not was_running:
            stack.down()
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, out_dir, alerts_url)
    if keep_running or was_running:
        print(f"the stack is still running: `fraudmon stack status`, Prometheus on {stack.ui_url('graph')}; "
              "stop it with `fraudmon stack down`")
    return summary
