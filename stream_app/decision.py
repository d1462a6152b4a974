"""The decision and the dead letter (contract: docs/contracts.md), as plain dictionaries ready for JSON."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

from fraudmon.core.events import Event, format_timestamp
from stream_app.rules import SEVERITIES, RuleHit

MAX_DEAD_LETTER_RAW = 16_384  # characters of the original value a dead letter keeps (bytes when base64)
CONTEXT_FIELDS = ("merchant_id", "merchant_category", "country", "channel", "ip", "device_id", "counterparty_id")
"""The event fields a flagged decision repeats in `context`, so that an analyst needs no join."""


def decide(model_flag: bool, hits: Sequence[RuleHit], flag_severity: str) -> tuple[str, list[str]]:
    """The flag-or-pass policy: `flag` when the model's score exceeds its threshold or a rule at or above
    `flag_severity` fired. Returns the decision and its reasons: `model` first, then the flagging rule ids."""
    floor = SEVERITIES[flag_severity]
    reasons = (["model"] if model_flag else []) + [hit.id for hit in hits if SEVERITIES[hit.severity] >= floor]
    return ("flag" if reasons else "pass"), reasons


def build_decision(
    event: Event,
    *,
    event_time: str,
    decision: str,
    reasons: Sequence[str],
    model_part: dict[str, Any] | None,
    hits: Sequence[RuleHit],
    skipped: Sequence[str],
    decided_at: str,
    latency_ms: float,
    shadow: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One decision (`event_time`: the event's `event_time`, formatted beforehand); `skipped:<cause>` is added to
    `reasons` for each part of the check that could not run; `shadow` (the shadow model's score and flag) when one
    is configured and could score the event; a flag carries `context`, the event's fields of `CONTEXT_FIELDS` that
    it has."""
    decision_record = {
        "transaction_id": event.transaction_id,
        "account_id": event.account_id,
        "amount": event.amount,
        "event_time": event_time,
        "decided_at": decided_at,
        "decision": decision,
        "reasons": [*reasons, *(f"skipped:{cause}" for cause in skipped)],
        "model": model_part,
        "rules": [{"id": h.id, "severity": h.severity, "detail": h.detail} for h in hits],
        "degraded": bool(skipped),
        "latency_ms": round(latency_ms, 3),
    }
    if shadow is not None:
        decision_record["shadow"] = shadow
    if decision == "flag":
        decision_record["context"] = {name: value for name in CONTEXT_FIELDS
                                      if (value := getattr(event, name)) is not None}
    return decision_record


def build_dead_letter(
    error: str, raw: bytes | None, topic: str, partition: int, offset: int, received_at_ms: float
) -> dict[str, Any]:
    """A dead letter keeps the original value (as text when it is UTF-8, else base64, as `raw_encoding` says),
    cut to a bounded size so that it can always be published; `raw_bytes` and `raw_sha256` describe the whole."""
    raw = raw or b""
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
        truncated = len(text) > MAX_DEAD_LETTER_RAW
        text = text[:MAX_DEAD_LETTER_RAW]
    except UnicodeDecodeError:
        kept = raw[: MAX_DEAD_LETTER_RAW * 3 // 4]
        text, encoding, truncated = base64.b64encode(kept).decode("ascii"), "base64", len(kept) < len(raw)
    return {
        "error": error,
        "raw": text,
        "raw_encoding": encoding,
        "raw_bytes": len(raw),
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "raw_truncated": truncated,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "received_at": format_timestamp(received_at_ms),
    }
