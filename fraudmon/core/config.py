"""Configuration: one typed object read from `config/monitor.yaml`, then overridden by environment variables.

Environment overrides: the short names below (`FRAUDMON_KAFKA_BOOTSTRAP`, `FRAUDMON_REDIS_URL`, ...) and, for any
setting, `FRAUDMON_<SECTION>__<KEY>` (for example `FRAUDMON_WORKER__LATENCY_BUDGET_MS=30`). Any other `FRAUDMON_`
variable is an error naming the closest known names: a misspelled override would otherwise leave its setting at
the file's value without a word, exactly as an unknown key in the file is refused.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from fraudmon.core.errors import ConfigError

HOME_ENV = "FRAUDMON_HOME"


def project_dir() -> Path:
    """Where relative paths (`config/`, `models/`, `monitoring/`, the stack's data) resolve: `$FRAUDMON_HOME`, or
    the working directory. Never the installed package's location, which a non-editable install moves."""
    return Path(os.environ.get(HOME_ENV) or Path.cwd()).resolve()


def default_config_path() -> Path:
    return project_dir() / "config" / "monitor.yaml"


ENV_PREFIX = "FRAUDMON_"

SHORT_ENV_NAMES = {
    "FRAUDMON_KAFKA_BOOTSTRAP": ("kafka", "bootstrap_servers"),
    "FRAUDMON_REDIS_URL": ("redis", "url"),
    "FRAUDMON_MODEL": ("worker", "model_path"),
    "FRAUDMON_RULES": ("worker", "rules_path"),
    "FRAUDMON_LATENCY_BUDGET_MS": ("worker", "latency_budget_ms"),
    "FRAUDMON_METRICS_PORT": ("worker", "metrics_port"),
    "FRAUDMON_LOG_JSON": ("logging", "json_logs"),
    "FRAUDMON_LOG_LEVEL": ("logging", "level"),
}

OTHER_ENV_NAMES = {
    HOME_ENV: "where relative paths resolve",
    "FRAUDMON_CONFIG": "the config file",
    "FRAUDMON_FUZZ_SCALE": "the test suite's share of generated examples",
    "FRAUDMON_OTHER_PYTHON": "scripts/test.sh: 0 skips the second Python's run",
}
"""`FRAUDMON_` variables that are not settings, read elsewhere."""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise ValueError(f"{value} is not a port: use 1 to 65535")
    return value


Port = Annotated[int, AfterValidator(_port)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for address in value.split(","):
            host, colon, port = address.strip().rpartition(":")
            if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{address.strip()!r} is not host:port (e.g. 127.0.0.1:9092; several: a,b)")
        return value

    def client_options(self) -> dict[str, Any]:
        """Security options in the keyword form both kafka-python and aiokafka accept."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, name):
                options[name] = getattr(self, name)
        return options


class TopicSettings(_Section):
    transactions: str = "transactions"
    flagged: str = "flagged-transactions"
    scores: str = "transaction-scores"
    dead_letter: str = "transactions-dlq"
    verdicts: str = "transaction-verdicts"  # analysts' verdicts, keyed by transaction id
    lists: str = "fraud-lists"  # live lists (`fraudmon lists`): compacted, one record per entry, followed by workers
    lists_audit: str = "fraud-lists-audit"  # every add and remove of a list entry: who, when, what, why
    lists_audit_retention_days: int | None = Field(None, ge=1)  # None: the audit trail is kept forever
    partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)

    def all(self) -> list[str]:
        return [self.transactions, self.flagged, self.scores, self.dead_letter, self.verdicts]


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "fm:"
    dedupe_ttl_s: int = Field(3600, ge=1)  # how long a transaction id is remembered against redelivery
    # Redis is unavailable (decisions degrade) when it refuses or drops the connection, or gives no answer for
    # this long; until then a busy Redis is waited for: the decisions come late but complete
    unavailable_after_s: float = Field(5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname) \
                or port == -1:
            raise ValueError(f"{value!r} is not a Redis URL (redis://host:6379/0, rediss://user:pw@host, "
                             "unix:///path/redis.sock)")
        return value


class EventSettings(_Section):
    """Limits of the event gate (docs/contracts.md); a message outside them is a dead letter naming the field."""

    max_message_bytes: int = Field(65536, ge=256)
    max_amount: float = Field(1e12, gt=0, allow_inf_nan=False)
    earliest_timestamp: datetime = datetime.fromisoformat("2000-01-01T00:00:00+00:00")
    max_future_s: float = Field(86400.0, ge=0, allow_inf_nan=False)  # how far ahead of the worker's clock
    max_features: int = Field(256, ge=0)
    max_feature_abs: float = Field(1e12, gt=0, allow_inf_nan=False)

    @field_validator("earliest_timestamp")
    @classmethod
    def _with_zone(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs a time zone, e.g. 2000-01-01T00:00:00Z")
        return value


class WorkerSettings(_Section):
    app_id: str = "fraud-monitor"
    model_path: str = "models/default.onnx"
    rules_path: str = "config/rules.yaml"
    data_dir: str | None = None  # Faust's own data directory; None: faust/ in stack.data_dir
    shadow_model_path: str | None = None  # a second model scored on every batch; never changes a decision
    verdict_window_s: int = Field(86_400, ge=60)  # how long a decision is kept to count an analyst's verdict
    drift_window: int = Field(5_000, ge=100)  # events per feature-drift (PSI) estimate
    latency_budget_ms: float = Field(50.0, gt=0)
    max_batch: int = Field(250, ge=1)
    batch_window_ms: float = Field(5.0, ge=0)
    batch_fetch: bool = True  # records go from the consumer's fetches to the engine, past Faust's per-message stream
    # Bytes fetched per partition and round trip (memory: up to this much per assigned partition is buffered)
    fetch_max_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)
    # Longest wait of a fetch request for data; while one waits, no other partition of its broker is fetched
    fetch_max_wait_ms: int = Field(20, ge=1, le=1500)
    metrics_port: int = Field(8000, ge=0, le=65535)
    metrics_address: str = "0.0.0.0"  # where /metrics listens: every interface (containers); 127.0.0.1 keeps it local
    web_port: int = Field(6066, ge=0, le=65535)  # Faust's web server; 0 = off
    web_bind: str = "127.0.0.1"  # where Faust's web server listens: this host only; 0.0.0.0 for every interface
    reload_interval_s: float = Field(2.0, gt=0)
    redis_retry_after_s: float = Field(1.0, gt=0)
    max_state_backlog: int = Field(100_000, ge=0)  # events decided while Redis was down, recorded when it is back
    startup_timeout_s: float = Field(120.0, gt=0)  # give up when Kafka or Redis do not answer at start
    session_timeout_s: float = Field(10.0, ge=6)  # a dead worker's partitions move after about this long
    heartbeat_interval_s: float = Field(3.0, gt=0)
    trace_path: str | None = None  # a JSON line per fetched batch with the time of each step (docs/performance.md)

    @field_validator("metrics_address", "web_bind")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address (0.0.0.0: every interface; 127.0.0.1: this host "
                             "only)") from None
        return value


class StackSettings(_Section):
    data_dir: str = ".stack"
    cache_dir: str = ".cache"
    kafka_port: Port = 9092
    kafka_controller_port: Port = 9093
    redis_port: Port = 6379
    prometheus_port: Port = 9090
    kafka_heap: str = "768m"
    # When Redis fsyncs its append-only file: "everysec" loses at most the last second or two of rule state to a
    # crash (Redis postpones writes while a slow fsync runs); "always" loses nothing, at a disk flush per write.
    redis_appendfsync: Literal["always", "everysec", "no"] = "everysec"


class LoggingSettings(_Section):
    level: str = "INFO"  # one of LOG_LEVELS, in any case
    json_logs: bool = False

    @field_validator("level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.strip().upper() not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level: use one of {', '.join(LOG_LEVELS)}")
        return value.strip().upper()


class Settings(_Section):
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    worker: WorkerSettings = WorkerSettings()
    events: EventSettings = EventSettings()
    stack: StackSettings = StackSettings()
    logging: LoggingSettings = LoggingSettings()

    def resolve(self, path: str) -> Path:
        """A path from the config: relative ones resolve from `project_dir()` (`$FRAUDMON_HOME` or the working
        directory)."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else project_dir() / candidate


def env_name(section: str, key: str) -> str:
    """The `FRAUDMON_<SECTION>__<KEY>` variable that overrides one setting."""
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"


def _apply_env(data: dict[str, Any], environ: dict[str, str], origins: dict[tuple[str, ...], str]) -> list[str]:
    """Write the overrides of `environ` into `data`, noting in `origins` which variable set each value. Returns the
    problems no validation of `data` shows: variables that set nothing, and invalid values of variables that
    another variable for the same setting overrode (`FRAUDMON_LOGGING__LEVEL` and `FRAUDMON_LOG_LEVEL`)."""
    problems = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in OTHER_ENV_NAMES:
            continue
        if name in SHORT_ENV_NAMES:
            section, key = SHORT_ENV_NAMES[name]
        elif "__" in name:
            section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        else:
            problems.append(f"{name}: {_unknown_variable(name)} (set in the environment: rename or unset it)")
            continue
        origin = f"set by environment variable {name}"
        if section not in data:
            data[section], origins[(section,)] = {}, origin
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section}: must be a mapping of settings, not {data[section]!r} "
                              f"({origins[(section,)]}), so {name} cannot set {section}.{key}")
        overridden = origins.get((section, key), "")
        if overridden.startswith("set by environment variable") and data[section][key] != value:
            problems += _problems_alone(section, key, data[section][key], overridden)
        data[section][key] = value
        origins[(section, key)] = origin
    return problems


def _problems_alone(section: str, key: str, value: Any, origin: str) -> list[str]:
    """The problems of one setting's value on its own."""
    try:
        Settings.model_validate({section: {key: value}})
    except ValidationError as exc:
        return [_problem(error, {(section, key): origin}) for error in exc.errors()]
    return []


def _unknown_variable(name: str) -> str:
    """A `FRAUDMON_` variable that sets nothing, with the closest names that do: the short names, and
    `FRAUDMON_<SECTION>__<KEY>` matched whole or by its key alone (`FRAUDMON_MAX_BATCH`)."""
    aliases: dict[str, list[str]] = {}
    for short in (*SHORT_ENV_NAMES, *OTHER_ENV_NAMES):
        aliases.setdefault(short.removeprefix(ENV_PREFIX), []).append(short)
    for section, field in Settings.model_fields.items():
        for key in field.annotation.model_fields:
            full = env_name(section, key)
            aliases.setdefault(full.removeprefix(ENV_PREFIX), []).append(full)
            aliases.setdefault(key.upper(), []).append(full)
    close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), list(aliases), n=3)
    names = list(dict.fromkeys(known for alias in close for known in aliases[alias]))[:3]
    if not names:
        return (f"unknown environment variable; settings are {ENV_PREFIX}<SECTION>__<KEY> (e.g. "
                f"{env_name('worker', 'max_batch')}) or one of {', '.join(SHORT_ENV_NAMES)}")
    return f"unknown environment variable; did you mean {' or '.join(names)}?"


def _unknown(loc: tuple[str, ...], origin: str) -> str:
    """An unknown section or setting, with the closest valid name (or all of them) to write instead."""
    if len(loc) == 1:
        kind, prefix, choices = "section", "", list(Settings.model_fields)
    else:
        kind, prefix, choices = "setting", f"{loc[0]}.", list(Settings.model_fields[loc[0]].annotation.model_fields)
    close = difflib.get_close_matches(loc[-1], choices, n=1)
    if not close:
        return f"unknown {kind}; valid ones: {', '.join(prefix + choice for choice in choices)}"
    hint = prefix + close[0]
    if kind == "setting" and "environment variable" in origin:
        hint += f" ({env_name(loc[0], close[0])})"
    return f"unknown {kind}; did you mean {hint}?"


def _problem(error: Any, origins: dict[tuple[str, ...], str]) -> str:
    """One validation error as `section.key: what is wrong (where the value came from)`."""
    loc = tuple(str(part) for part in error["loc"])
    origin = origins.get(loc[:2]) or origins.get(loc[:1], "")
    if error["type"] == "extra_forbidden":
        message = _unknown(loc, origin)
    elif error["type"] == "value_error":
        message = error["msg"].removeprefix("Value error, ")
    else:
        message = f"{error['msg']}, got {error['input']!r}"
    return f"{'.'.join(loc)}: {message}" + (f" ({origin})" if origin else "")


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read the YAML file (default `config/monitor.yaml`, or `$FRAUDMON_CONFIG`) and apply env overrides. An
    invalid value or unknown key raises ConfigError naming the key and the file or variable that set it."""
    environ = dict(os.environ if environ is None else environ)
    explicit = path or environ.get("FRAUDMON_CONFIG")
    config_path = Path(explicit) if explicit else default_config_path()
    data: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    if config_path.exists():
        try:
            loaded = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path} must hold a mapping of sections (kafka, redis, worker, ...)")
        data = loaded
        for section, values in data.items():
            origins[(str(section),)] = f"set in {config_path}"
            for key in values if isinstance(values, dict) else ():
                origins[(str(section), str(key))] = f"set in {config_path}"
    elif explicit:
        raise ConfigError(f"config file {config_path} does not exist")
    problems = _apply_env(data, environ, origins)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems += [_problem(error, origins) for error in exc.errors()]
    if problems:
        listed = f" {problems[0]}" if len(problems) == 1 else "".join(f"\n  {problem}" for problem in problems)
        raise ConfigError(f"invalid configuration:{listed}")
    return settings
