"""Exceptions users can catch by name. Each message says what to fix."""


class FraudMonitorError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(FraudMonitorError):
    """The configuration file or an environment override is invalid."""


class StackError(FraudMonitorError):
    """The local stack (Kafka, Redis, Prometheus) could not be installed or started."""


class InputDataError(FraudMonitorError):
    """An input file (CSV, JSON lines) is malformed; the message names the row and column."""


class ModelError(FraudMonitorError):
    """A model file or model card is missing, corrupt, or the two disagree."""


class RulesError(FraudMonitorError):
    """The rules file is invalid."""


class StateUnavailable(FraudMonitorError):
    """The rule state store (Redis) is unavailable: it refused or dropped the connection, or gave no answer for
    `redis.unavailable_after_s`."""


class InvalidEvent(FraudMonitorError, ValueError):
    """A message is not a valid transaction event; the message (`<field>: <reason>`) names the field."""


class FeatureError(FraudMonitorError, ValueError):
    """A feature name is unknown, or an event lacks a feature the model needs."""


class TrainingError(FraudMonitorError, ValueError):
    """Training cannot go on as asked: a threshold, a model setting or a simulation setting is invalid."""


class ProduceError(FraudMonitorError):
    """Events could not be read or sent to Kafka; the message says what to fix."""


class WatchError(FraudMonitorError):
    """An output topic could not be read (no broker, unknown topic)."""
