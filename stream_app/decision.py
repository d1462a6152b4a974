"""The decision (SPEC: Decision) and the dead letter (SPEC: Dead letter), as plain dictionaries ready for JSON."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from stream_app.rules import RuleHit
from stream_app.schema import Event, format_timestamp


def build_decision(
    event: Event,
    *,
    flag: bool,
    model_part: dict[str, Any] | None,
    model_flag: bool,
    hits: Sequence[RuleHit],
    flagging_rules: Sequence[str],
    skipped: Sequence[str],
    decided_at: str,
    latency_ms: float,
) -> dict[str, Any]:
    """One decision: `reasons` lists `model` and the flagging rule ids, then `skipped:<part>` when degraded."""
    reasons = (["model"] if model_flag else []) + list(flagging_rules) + [f"skipped:{part}" for part in skipped]
    return {
        "transaction_id": event.transaction_id,
        "account_id": event.account_id,
        "amount": event.amount,
        "event_time": event.event_time,
        "decided_at": decided_at,
        "decision": "flag" if flag else "pass",
        "reasons": reasons,
        "model": model_part,
        "rules": [{"id": h.id, "severity": h.severity, "detail": h.detail} for h in hits],
        "degraded": bool(skipped),
        "latency_ms": round(latency_ms, 3),
    }


def build_dead_letter(
    error: str, raw: bytes | None, topic: str, partition: int, offset: int, received_at_ms: float
) -> dict[str, Any]:
    """A dead letter keeps the original value: as text when it is UTF-8, else base64 (`raw_encoding` says which)."""
    if raw is None:
        text, encoding = "", "utf-8"
    else:
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return {
        "error": error,
        "raw": text,
        "raw_encoding": encoding,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "received_at": format_timestamp(received_at_ms),
    }
