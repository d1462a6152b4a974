"""The decision and the dead letter (contract: docs/contracts.md), as plain dictionaries ready for JSON."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

from fraudmon.core.events import Event, format_timestamp
from stream_app.rules import RuleHit

MAX_DEAD_LETTER_RAW = 16_384  # characters of the original value a dead letter keeps (bytes when base64)
CONTEXT_FIELDS = ("merchant_id", "merchant_category", "country", "channel", "ip", "device_id", "counterparty_id")
"""The event fields a review or block decision repeats in `context`, so that an analyst needs no join."""


def build_decision(
    event: Event,
    *,
    event_time: str,
    action: str,
    reasons: Sequence[str],
    model_part: dict[str, Any] | None,
    risk_score: float | None,
    hits: Sequence[RuleHit],
    shadow_hits: Sequence[RuleHit],
    rule_errors: Sequence[str],
    skipped: Sequence[str],
    decided_at: str,
    latency_ms: float,
    shadow: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One decision (`event_time`: the event's `event_time`, formatted beforehand). `reasons` are what chose the
    action; `rule_error:<id>` is added for each rule that failed on this event and `skipped:<cause>` for each part
    of the check that could not run. `shadow` (the shadow model's score and flag) when one is configured and could
    score the event. A decision other than allow carries `context`, the event's fields of `CONTEXT_FIELDS`."""
    decision_record = {
        "transaction_id": event.transaction_id,
        "account_id": event.account_id,
        "amount": event.amount,
        "currency": event.currency,
        "event_time": event_time,
        "decided_at": decided_at,
        "action": action,
        "decision": "pass" if action == "allow" else "flag",
        "risk_score": risk_score,
        "reasons": [*reasons, *(f"rule_error:{rule}" for rule in rule_errors),
                    *(f"skipped:{cause}" for cause in skipped)],
        "model": model_part,
        "rules": [{"id": h.id, "action": h.action, "detail": h.detail} for h in hits],
        "shadow_rules": [{"id": h.id, "action": h.action, "detail": h.detail} for h in shadow_hits],
        "degraded": bool(skipped),
        "latency_ms": round(latency_ms, 3),
    }
    if shadow is not None:
        decision_record["shadow"] = shadow
    if action != "allow":
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
