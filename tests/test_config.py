"""Configuration: YAML file, environment overrides, and errors that say what to fix."""

from __future__ import annotations

import re

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


def test_bad_value_from_the_environment_names_the_variable_not_the_file():
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"FRAUDMON_WORKER__MAX_BATCH": "abc"})
    message = str(raised.value)
    assert "worker.max_batch: " in message and "'abc'" in message
    assert "set by environment variable FRAUDMON_WORKER__MAX_BATCH" in message
    assert "monitor.yaml" not in message


def test_bad_value_from_the_file_names_the_file(tmp_path):
    path = tmp_path / "monitor.yaml"
    path.write_text("worker: {max_batch: abc}\n")
    with pytest.raises(ConfigError, match=rf"worker\.max_batch: .*'abc' \(set in {re.escape(str(path))}\)"):
        load_settings(path, environ={})


def test_environment_override_of_a_file_value_is_what_gets_blamed(tmp_path):
    path = tmp_path / "monitor.yaml"
    path.write_text("worker: {max_batch: 10, metrics_port: 8001}\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={"FRAUDMON_METRICS_PORT": "70000"})
    assert str(raised.value) == ("invalid configuration: worker.metrics_port: Input should be less than or equal to "
                                 "65535, got '70000' (set by environment variable FRAUDMON_METRICS_PORT)")


def test_every_problem_is_listed_on_its_own_line(tmp_path):
    path = tmp_path / "monitor.yaml"
    path.write_text("worker: {max_batch: 0}\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={"FRAUDMON_REDIS_URL": "localhost"})
    lines = str(raised.value).splitlines()
    assert lines[0] == "invalid configuration:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["redis.url", "worker.max_batch"]
    assert lines[1].endswith("(set by environment variable FRAUDMON_REDIS_URL)")
    assert lines[2].endswith(f"(set in {path})")


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("worker: {max_bach: 5}", {}, "worker.max_bach: unknown setting; did you mean worker.max_batch? (set in "),
        ("", {"FRAUDMON_WORKER__MAX_BACH": "5"},
         "worker.max_bach: unknown setting; did you mean worker.max_batch (FRAUDMON_WORKER__MAX_BATCH)? "
         "(set by environment variable FRAUDMON_WORKER__MAX_BACH)"),
        ("wroker: {max_batch: 5}", {}, "wroker: unknown section; did you mean worker? (set in "),
        ("", {"FRAUDMON_KAFAK__BOOTSTRAP_SERVERS": "k:9092"},
         "kafak: unknown section; did you mean kafka? (set by environment variable FRAUDMON_KAFAK__BOOTSTRAP_SERVERS)"),
        ("redis: {colour: blue}", {}, "redis.colour: unknown setting; valid ones: redis.url, redis.key_prefix, "),
    ],
)
def test_unknown_keys_suggest_the_closest_valid_one(tmp_path, text, environ, message):
    path = tmp_path / "monitor.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ=environ)
    assert message in str(raised.value)


def test_metrics_address_defaults_to_every_interface_and_must_be_an_ip_address():
    assert load_settings(environ={}).worker.metrics_address == "0.0.0.0"
    assert load_settings(environ={"FRAUDMON_WORKER__METRICS_ADDRESS": "::1"}).worker.metrics_address == "::1"
    with pytest.raises(ConfigError, match="worker.metrics_address: 'metrics.local' is not an IP address"):
        load_settings(environ={"FRAUDMON_WORKER__METRICS_ADDRESS": "metrics.local"})


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_a_log_level_outside_the_known_ones_is_refused_naming_them():
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"FRAUDMON_LOGGING__LEVEL": "LOUD"})
    assert str(raised.value) == ("invalid configuration: logging.level: 'LOUD' is not a log level: use one of DEBUG, "
                                 "INFO, WARNING, ERROR, CRITICAL (set by environment variable "
                                 "FRAUDMON_LOGGING__LEVEL)")
    assert load_settings(environ={"FRAUDMON_LOG_LEVEL": "debug"}).logging.level == "DEBUG"


@pytest.mark.parametrize("order", [("FRAUDMON_LOGGING__LEVEL", "FRAUDMON_LOG_LEVEL"),
                                   ("FRAUDMON_LOG_LEVEL", "FRAUDMON_LOGGING__LEVEL")])
def test_a_bad_value_is_refused_even_when_another_variable_sets_the_same_setting(order):
    """`fraudmon worker` sets FRAUDMON_LOG_LEVEL from --log-level; a LOUD FRAUDMON_LOGGING__LEVEL must not hide."""
    values = {"FRAUDMON_LOGGING__LEVEL": "LOUD", "FRAUDMON_LOG_LEVEL": "INFO"}
    with pytest.raises(ConfigError, match=r"logging\.level: 'LOUD' is not a log level: use one of DEBUG, .* "
                                          r"\(set by environment variable FRAUDMON_LOGGING__LEVEL\)"):
        load_settings(environ={name: values[name] for name in order})


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        ("FRAUDMON_LATENCY_BUDGET", "did you mean FRAUDMON_LATENCY_BUDGET_MS or FRAUDMON_WORKER__LATENCY_BUDGET_MS?"),
        ("FRAUDMON_MAX_BATCH", "did you mean FRAUDMON_WORKER__MAX_BATCH"),
        ("FRAUDMON_CONFIGS", "did you mean FRAUDMON_CONFIG?"),
        ("FRAUDMON_XYZZY", "settings are FRAUDMON_<SECTION>__<KEY> (e.g. FRAUDMON_WORKER__MAX_BATCH) or one of "
                           "FRAUDMON_KAFKA_BOOTSTRAP, "),
    ],
)
def test_a_variable_that_sets_nothing_is_refused_with_the_closest_names(name, suggested):
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={name: "10"})
    message = str(raised.value)
    assert message.startswith(f"invalid configuration: {name}: unknown environment variable; ")
    assert suggested in message and message.endswith("(set in the environment: rename or unset it)")


def test_variables_that_are_not_settings_are_left_alone():
    settings = load_settings(environ={"FRAUDMON_HOME": "/tmp", "FRAUDMON_FUZZ_SCALE": "0.25",
                                      "FRAUDMON_OTHER_PYTHON": "0", "OTHER_TOOL_LATENCY": "1"})
    assert settings.worker.latency_budget_ms == 50


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_stack_ports_are_validated_with_the_range(port):
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"FRAUDMON_STACK__REDIS_PORT": port})
    assert str(raised.value) == (f"invalid configuration: stack.redis_port: {port} is not a port: use 1 to 65535 "
                                 "(set by environment variable FRAUDMON_STACK__REDIS_PORT)")
    assert load_settings(environ={"FRAUDMON_STACK__REDIS_PORT": "65535"}).stack.redis_port == 65535


def test_stack_status_with_a_port_out_of_range_says_so_in_one_line(monkeypatch):
    from typer.testing import CliRunner

    from fraudmon.cli import app

    monkeypatch.setenv("FRAUDMON_STACK__REDIS_PORT", "70000")
    result = CliRunner().invoke(app, ["stack", "status"])
    assert result.exit_code == 2 and result.exception.__class__ is SystemExit
    assert result.output == ("error: invalid configuration: stack.redis_port: 70000 is not a port: use 1 to 65535 "
                             "(set by environment variable FRAUDMON_STACK__REDIS_PORT)\n")
