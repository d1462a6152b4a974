"""The decision and the dead letter (contract: docs/contracts.md), as plain dictionaries ready for JSON."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

from stream_app.rules import RuleHit
from stream_app.schema import Event, format_timestamp

MAX_DEAD_LETTER_RAW = 16_384  # characters of the original value a dead letter keeps (bytes when base64)


def build_decision(
    event: Event,
    *,
    model_part: dict[str, Any] | None,
    model_flag: bool,
    hits: Sequence[RuleHit],
    flagging_rules: Sequence[str],
    skipped: Sequence[str],
    decided_at: str,
    latency_ms: float,
) -> dict[str, Any]:
    """One decision: a flag when the model or a flagging rule says so. `reasons` lists `model` and the flagging
    rule ids, then `skipped:<cause>` for each part of the check that could not run."""
    reasons = (["model"] if model_flag else []) + list(flagging_rules) + [f"skipped:{cause}" for cause in skipped]
    return {
        "transaction_id": event.transaction_id,
        "account_id": event.account_id,
        "amount": event.amount,
        "event_time": event.event_time,
        "decided_at": decided_at,
        "decision": "flag" if model_flag or flagging_rules else "pass",
        "reasons": reasons,
        "model": model_part,
        "rules": [{"id": h.id, "severity": h.severity, "detail": h.detail} for h in hits],
        "degraded": bool(skipped),
        "latency_ms": round(latency_ms, 3),
    }


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
