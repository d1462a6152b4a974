"""`fraudmon label`: a verdict is posted only on a transaction the worker decided (its decision store in Redis),
unless --force; an unknown id or a Redis that does not answer is refused in one line, before Kafka is asked."""

from __future__ import annotations

import uuid

import pytest
from typer.testing import CliRunner

from fraudmon.cli import app
from fraudmon.tools.label import decision_store
from fraudmon.tools.stack import free_port
from stream_app.state import InMemoryStateStore


def label(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["label", *args], env=env)


@pytest.fixture
def no_kafka(monkeypatch):
    """Kafka must not be asked: a refused verdict is never posted."""

    def refuse(*args, **kwargs):
        raise AssertionError("a refused verdict reached Kafka")

    monkeypatch.setattr("fraudmon.tools.label.KafkaProducer", refuse)


def test_an_unknown_transaction_is_refused_with_exit_1(monkeypatch, no_kafka):
    store = InMemoryStateStore()
    store.remember([("tx-known", "pass|")])
    monkeypatch.setattr("fraudmon.tools.label.decision_store", lambda settings: store)
    result = label("tx-does-not-exist", "--fraud", "--reviewer", "ana")
    assert result.exit_code == 1
    assert result.output == ("error: the worker has no decision on 'tx-does-not-exist' in the last 86400 s "
                             "(worker.verdict_window_s): check the id, or post the verdict anyway with --force (the "
                             "worker will dead-letter it)\n")


def test_a_redis_that_does_not_answer_is_named_and_the_verdict_refused(no_kafka):
    result = label("tx-1", "--legit", env={"FRAUDMON_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: cannot check that the worker decided 'tx-1': Redis did not answer: ")
    assert result.output.endswith("start the stack (`fraudmon stack up`), check redis.url, or post the verdict "
                                  "unchecked with --force\n")


def test_exactly_one_of_fraud_and_legit(no_kafka):
    assert label("tx-1").exit_code == 2
    assert label("tx-1", "--fraud", "--legit").exit_code == 2


@pytest.mark.integration
def test_verdicts_are_posted_on_decided_transactions_and_forced_ones_only(settings, redis_url, kafka_bootstrap,
                                                                          make_topic):
    from tests.test_worker import collect

    topic, prefix = make_topic(partitions=1), f"label-{uuid.uuid4().hex[:8]}:"
    store = decision_store(settings.model_copy(update={"redis": settings.redis.model_copy(
        update={"key_prefix": prefix})}))
    store.remember([("tx-flagged", "flag|velocity_burst,new_device"), ("tx-passed", "pass|")])  # as the worker does
    assert store.recall("tx-flagged")  # reads the answer to `remember`: the decisions are kept
    env = {"FRAUDMON_REDIS_URL": redis_url, "FRAUDMON_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "FRAUDMON_REDIS__KEY_PREFIX": prefix, "FRAUDMON_TOPICS__VERDICTS": topic}

    flagged = label("tx-flagged", "--fraud", "--reviewer", "ana", env=env)
    assert flagged.exit_code == 0, flagged.output
    assert flagged.output == (f"verdict fraud on tx-flagged posted to {topic}; the worker's decision: flag (rules: "
                              "velocity_burst, new_device)\n")
    passed = label("tx-passed", "--legit", "--reviewer", "ana", env=env)
    assert passed.exit_code == 0 and passed.output.endswith("the worker's decision: pass\n"), passed.output
    unknown = label("tx-unknown", "--fraud", env=env)
    assert unknown.exit_code == 1 and "no decision on 'tx-unknown'" in unknown.output
    forced = label("tx-unknown", "--fraud", "--force", "--reviewer", "ana", "--note", "phoned in",
                   env={**env, "FRAUDMON_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert forced.exit_code == 0, forced.output
    assert forced.output.endswith("the worker's decision: not checked (--force)\n")

    posted = collect(kafka_bootstrap, topic, 3, timeout_s=30)
    assert [(v["transaction_id"], v["label"], v["reviewer"]) for v in posted] == [
        ("tx-flagged", "fraud", "ana"), ("tx-passed", "legit", "ana"), ("tx-unknown", "fraud", "ana")]
