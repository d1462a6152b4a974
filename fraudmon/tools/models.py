"""Served model, candidates, and promotion behind a backtest gate (`fraudmon models`, `fraudmon promote`).

`fraudmon train` writes candidates (`models/candidates/<name>-<version>/`); the served model is the file
`worker.model_path` points at. `promote` backtests a candidate and the served model through the worker's exact
decision code (offline replay, same rules) on labelled data, refuses a candidate that does not fit the data
(`stream_app.fit`), catches less fraud or flags much more (a served model that does not fit the data is no
baseline: the candidate is judged on its own fit, and the command says so), and otherwise switches atomically:
both files are written beside the target and renamed into place, the card last, so running workers pick it up
through hot reload. The served model it replaced is kept in
`models/previous/`, which `promote --rollback` returns to, once: the rolled-back model goes back through the gate.
Rollback restores the earlier files byte for byte (a shipped default is left as checked in); what happened is
appended to `models/history.jsonl` (untracked, as everything under models/ but the default).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from fraudmon.core import rates
from fraudmon.core.config import Settings
from fraudmon.core.errors import FraudMonitorError, ModelError
from stream_app.engine import RawMessage
from stream_app.replay import offline_engine, replay
from stream_app.scoring import OnnxModel, load_model

CANDIDATES_DIR = "candidates"
PREVIOUS_DIR = "previous"
HISTORY_FILE = "history.jsonl"  # one line per promotion and rollback, next to the served model


@dataclass(frozen=True)
class Backtest:
    """One model's decisions on the labelled backtest data."""

    version: str
    decisions: int
    flags: int
    frauds: int
    caught: int
    misfit: str | None = None  # why the model does not fit the backtest data (`stream_app.fit`); None: it does

    @property
    def alert_rate(self) -> float:
        return self.flags / self.decisions if self.decisions else 0.0

    @property
    def recall(self) -> float | None:
        return rates.recall(self.caught, self.frauds)

    @property
    def precision(self) -> float | None:
        return rates.precision(self.caught, self.flags)


def models_dir(settings: Settings) -> Path:
    return settings.resolve(settings.worker.model_path).parent


def candidates(settings: Settings) -> list[Path]:
    """Every candidate's ONNX file, newest first."""
    root = models_dir(settings) / CANDIDATES_DIR
    found = [p for p in root.glob("*/*.onnx") if p.with_suffix(".json").is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_candidate(settings: Settings, name: str) -> Path:
    """A candidate by path (directory or .onnx) or by its directory name under models/candidates/."""
    path = Path(name)
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if len(found) == 1:
            return found[0]
    if path.suffix == ".onnx" and path.is_file():
        return path
    matches = [p for p in candidates(settings) if p.parent.name == name or p.parent.name.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(p.parent.name for p in candidates(settings)) or "none (train one with `fraudmon train`)"
    raise ModelError(f"no single candidate matches {name!r}; candidates: {listed}")


def backtest(settings: Settings, model: OnnxModel, messages: list[RawMessage], labels: dict[str, int]) -> Backtest:
    """Replay `messages` through the worker's decision code with `model`; count flags and caught frauds, and say
    when the model does not fit the data (then it flags nothing it can be judged by: none when it cannot score
    most events, nonsense when it scores them)."""
    engine = offline_engine(settings)
    engine.set_model(model)
    frauds = {tx for tx, label in labels.items() if label == 1}
    try:
        result = replay(messages, engine)
    except ModelError as exc:  # it cannot score most of the events
        return Backtest(model.version, 0, 0, len(frauds), 0, misfit=str(exc))
    flagged = {d["transaction_id"] for d in result.decisions if d["decision"] == "flag"}
    return Backtest(model.version, len(result.decisions), len(flagged), len(frauds), len(flagged & frauds),
                    misfit="; ".join(result.misfits) or None)


def gate(served: Backtest, candidate: Backtest, max_recall_drop: float, max_alert_rate_rise: float) -> list[str]:
    """Why the candidate must not replace the served model (empty: it may). A candidate that does not fit the
    data is refused. A served model that does not fit it is no baseline: the candidate is then judged on its
    own fit, and the caller says so (`served.misfit`)."""
    if candidate.misfit:
        return [f"the candidate does not fit the backtest data: {candidate.misfit}"]
    if served.misfit:
        return []
    problems = []
    if (candidate.recall or 0.0) < (served.recall or 0.0) - max_recall_drop:
        problems.append(f"recall drops from {rates.shown(served.recall)} to {rates.shown(candidate.recall)} "
                        f"(allowed: {max_recall_drop:.3f})")
    if candidate.alert_rate > served.alert_rate * (1 + max_alert_rate_rise):
        problems.append(f"alert rate rises from {served.alert_rate:.4f} to {candidate.alert_rate:.4f} "
                        f"(allowed: +{max_alert_rate_rise:.0%})")
    return problems


def table(served: Backtest, candidate: Backtest) -> str:
    rows = [("", "served", "candidate"), ("version", served.version, candidate.version),
            ("decisions", served.decisions, candidate.decisions), ("flags", served.flags, candidate.flags),
            ("alert rate", f"{served.alert_rate:.4f}", f"{candidate.alert_rate:.4f}"),
            ("frauds caught", f"{served.caught}/{served.frauds}", f"{candidate.caught}/{candidate.frauds}"),
            ("recall", rates.shown(served.recall), rates.shown(candidate.recall)),
            ("precision", rates.shown(served.precision), rates.shown(candidate.precision)),
            ("fits the data", "no" if served.misfit else "yes", "no" if candidate.misfit else "yes")]
    return "\n".join(f"{a:<14} {b!s:>20} {c!s:>20}" for a, b, c in rows)


def install(source_onnx: Path, target_onnx: Path, card_changes: dict | None = None) -> None:
    """Put a model in place atomically: both files written beside the target, the graph renamed first and the
    card last, so a watching worker never pairs a new graph with an old card for longer than a moment. Without
    `card_changes` the card is copied byte for byte."""
    target_card = target_onnx.with_suffix(".json")
    partial_onnx = target_onnx.with_name(target_onnx.name + ".partial")
    partial_card = target_card.with_name(target_card.name + ".partial")
    shutil.copyfile(source_onnx, partial_onnx)
    if card_changes:
        card = json.loads(source_onnx.with_suffix(".json").read_text())
        partial_card.write_text(json.dumps({**card, **card_changes}, indent=2) + "\n")
    else:
        shutil.copyfile(source_onnx.with_suffix(".json"), partial_card)
    os.replace(partial_onnx, target_onnx)
    os.replace(partial_card, target_card)


def previous_path(served_onnx: Path) -> Path:
    """Where the model the last promotion replaced is kept (what --rollback returns to)."""
    return served_onnx.parent / PREVIOUS_DIR / served_onnx.name


def keep_previous(served_onnx: Path) -> Path:
    """Copy the served model to models/previous/."""
    previous = previous_path(served_onnx)
    previous.parent.mkdir(parents=True, exist_ok=True)
    install(served_onnx, previous)
    return previous


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record(served_onnx: Path, entry: dict) -> None:
    """Append a promotion or rollback to the history next to the served model."""
    with (served_onnx.parent / HISTORY_FILE).open("a") as handle:
        handle.write(json.dumps({"at": _now(), "served_path": str(served_onnx), **entry}) + "\n")


def last_record(served_onnx: Path) -> dict | None:
    """The latest history entry about this served model, or None."""
    history = served_onnx.parent / HISTORY_FILE
    lines = history.read_text().splitlines() if history.is_file() else []
    entries = [json.loads(line) for line in lines if line.strip()]
    return next((e for e in reversed(entries) if e.get("served_path") == str(served_onnx)), None)


def promote(settings: Settings, candidate_onnx: Path, messages: list[RawMessage], labels: dict[str, int], *,
            max_recall_drop: float, max_alert_rate_rise: float, force: bool) -> tuple[Backtest, Backtest, list[str]]:
    """Backtest both, then switch unless the gate refuses (or `force`). Returns both backtests and the gate's
    objections; raises nothing when refused, so the caller can show the table."""
    served_onnx = settings.resolve(settings.worker.model_path)
    served_model, candidate_model = load_model(served_onnx), load_model(candidate_onnx)
    if not any(labels.values()):
        raise ModelError("the backtest data holds no fraud label: pass labelled recent data (--truth) to compare "
                         "recall")
    if candidate_model.version == served_model.version:
        raise ModelError(f"{candidate_model.version} is already the served model ({served_onnx}): nothing to "
                         "promote")
    served = backtest(settings, served_model, messages, labels)
    candidate = backtest(settings, candidate_model, messages, labels)
    problems = gate(served, candidate, max_recall_drop, max_alert_rate_rise)
    if problems and not force:
        return served, candidate, problems
    keep_previous(served_onnx)
    promotion = {"at": _now(), "replaced": served_model.version, "forced": bool(problems), "gate": problems,
                 "from": str(candidate_onnx), "backtest": {"served": asdict(served), "candidate": asdict(candidate)}}
    install(candidate_onnx, served_onnx, {"promotion": promotion})
    record(served_onnx, {"action": "promote", "served": candidate_model.version, "replaced": served_model.version,
                         "forced": bool(problems), "from": str(candidate_onnx)})
    return served, candidate, problems


def rollback(settings: Settings) -> tuple[str, str]:
    """Serve the model the last promotion replaced again, as it was, and forget it as previous: a second rollback
    is refused, since the model rolled back must pass the gate again. Returns the versions now served and rolled
    back."""
    served_onnx = settings.resolve(settings.worker.model_path)
    previous = previous_path(served_onnx)
    if not previous.is_file():
        raise ModelError(_nothing_to_roll_back(served_onnx, previous))
    returning = load_model(previous)  # checked before it is served
    leaving = _card(served_onnx)  # only read, if it can be: a broken served model is what a rollback is for
    leaving_version = leaving.get("version") or str(served_onnx)
    install(previous, served_onnx)
    previous.unlink()
    previous.with_suffix(".json").unlink()
    record(served_onnx, {"action": "rollback", "served": returning.version, "rolled_back": leaving_version,
                         "rolled_back_from": (leaving.get("promotion") or {}).get("from")})
    return returning.version, leaving_version


def _card(model_path: Path) -> dict:
    """A model's card as written, without loading the graph or checking the card ({}: none readable)."""
    try:
        card = json.loads(model_path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _nothing_to_roll_back(served_onnx: Path, previous: Path) -> str:
    """Why --rollback has nothing to return to, what is served, and what to do instead."""
    served = f"{_card(served_onnx).get('version') or served_onnx} is served"
    last = last_record(served_onnx)
    if last and last["action"] == "rollback":
        source = Path(last.get("rolled_back_from") or last["rolled_back"])
        name = source.parent.name if source.parent.parent.name == CANDIDATES_DIR else source
        return (f"nothing to roll back to: {served} again since {last['at']}, when {last['rolled_back']} was rolled "
                f"back; to serve {last['rolled_back']} again, promote it through the gate: `fraudmon promote "
                f"{name} --data <labelled recent events>`")
    return (f"nothing to roll back to: {served} and no promotion replaced an earlier model ({previous} does not "
            "exist); `fraudmon promote <candidate> --data <labelled recent events>` serves another")


def describe(model_path: Path) -> str:
    """One line for a model: name, version, threshold, expected alert rate, held-out ROC-AUC / PR-AUC."""
    try:
        model = load_model(model_path)
    except FraudMonitorError as exc:
        return f"{model_path}: unusable ({exc})"
    held_out = (model.card.get("metrics") or {}).get("model") or {}
    roc, pr = held_out.get("roc_auc", float("nan")), held_out.get("pr_auc", float("nan"))
    return (f"{model.name:<14} {model.version:<18} threshold {model.threshold:.4g} "
            f"({model.card.threshold.method})  expected alert rate {model.card.expected_alert_rate:.4f}  "
            f"held-out ROC-AUC {roc:.3f} PR-AUC {pr:.3f}  {model_path}")


def unserved_candidates(settings: Settings) -> tuple[list[Path], int]:
    """The candidates that are not the served model (by version), and how many candidates there are in all."""
    served_version = _card(settings.resolve(settings.worker.model_path)).get("version")
    every = candidates(settings)
    return [path for path in every if _card(path).get("version") != served_version], len(every)
