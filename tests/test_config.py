"""Configuration: YAML file, environment overrides, and errors that say what to fix."""

from __future__ import annotations

import pytest

from fraudmon.core.config import load_settings
from fraudmon.core.errors import ConfigError


def test_defaults_from_the_shipped_file():
    settings = load_settings(environ={})
    assert settings.topics.transactions == "transactions"
    assert settings.topics.partitions == 6
    assert settings.worker.latency_budget_ms == 50


def test_environment_overrides_short_and_long_names(tmp_path):
    settings = load_settings(environ={
        "FRAUDMON_KAFKA_BOOTSTRAP": "kafka:19092",
        "FRAUDMON_REDIS_URL": "redis://redis:6379/1",
        "FRAUDMON_WORKER__LATENCY_BUDGET_MS": "30",
        "FRAUDMON_TOPICS__TRANSACTIONS": "tx-in",
    })
    assert settings.kafka.bootstrap_servers == "kafka:19092"
    assert settings.redis.url == "redis://redis:6379/1"
    assert settings.worker.latency_budget_ms == 30.0
    assert settings.topics.transactions == "tx-in"


def test_sasl_settings_pass_through_to_clients():
    settings = load_settings(environ={
        "FRAUDMON_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "FRAUDMON_KAFKA__SASL_MECHANISM": "PLAIN",
        "FRAUDMON_KAFKA__SASL_USERNAME": "u", "FRAUDMON_KAFKA__SASL_PASSWORD": "p",
    })
    options = settings.kafka.client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_plain_username"] == "u"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("worker: {latency_budget_ms: -5}", "worker.latency_budget_ms"),
        ("worker: {latency_budget: 5}", "worker.latency_budget"),
        ("[1, 2]", "must hold a mapping"),
        ("worker: {", "not valid YAML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, text, message):
    path = tmp_path / "monitor.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ={})


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})
