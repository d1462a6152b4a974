"""The worker's Prometheus metrics (SPEC: Metrics), in a registry of their own so tests can read them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from stream_app.rules import RuleSet

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Reconstruction errors span decades: the default model's normal median is ~1e-4 and its threshold ~7e-3, the
# card-holder model's threshold ~2. Two buckets per decade keep both readable on the heatmap.
SCORE_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


class WorkerMetrics:
    """All metrics one worker exports; label values come from small fixed sets (never ids)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._serving = False
        r = self.registry
        self.input_messages = Counter(
            "fraud_input_messages", "Messages consumed from the transactions topic, valid or not.", registry=r
        )
        self.events = Counter("fraud_events", "Events by outcome.", ["outcome"], registry=r)
        self.decisions = Counter("fraud_decisions", "Decisions published, by decision (flag = not allow) and action.",
                                 ["decision", "action"], registry=r)
        self.rule_hits = Counter("fraud_rule_hits", "Live rule hits by rule id and its action.", ["rule", "action"],
                                 registry=r)
        self.shadow_rule_hits = Counter("fraud_shadow_rule_hits", "Shadow rule hits (they never act).",
                                        ["rule", "action"], registry=r)
        self.rule_errors = Counter("fraud_rule_errors", "Events on which a rule's expression failed (the rule did "
                                   "not fire; the decision says rule_error:<id>).", ["rule"], registry=r)
        self.rule_verdicts = Counter("fraud_rule_verdicts", "Analysts' verdicts on decisions a live rule fired on.",
                                     ["rule", "verdict"], registry=r)
        self.model_flags = Counter("fraud_model_flags", "Events whose model score exceeded the card's threshold "
                                   "(whatever action was chosen).", registry=r)
        self.model_score = Histogram(
            "fraud_model_score", "Anomaly score per event.", buckets=SCORE_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "fraud_inference_seconds", "onnxruntime call per batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.processing_seconds = Histogram(
            "fraud_processing_seconds", "In-worker time per event (consumed to decided).",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "fraud_end_to_end_seconds", "Event timestamp to decision published.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.budget_exceeded = Counter(
            "fraud_latency_budget_exceeded", "Events decided later than the latency budget.", registry=r
        )
        self.degraded = Counter("fraud_degraded", "Degraded decisions by cause.", ["cause"], registry=r)
        self.model_info = Gauge("fraud_model_info", "The model being served.", ["version", "name"], registry=r)
        self.model_threshold = Gauge("fraud_model_threshold", "Decision threshold of the served model.", registry=r)
        self.model_expected_alert_rate = Gauge(
            "fraud_model_expected_alert_rate",
            "Share of normal traffic the model card expects above the threshold.", registry=r,
        )
        self.latency_budget_seconds = Gauge("fraud_latency_budget_seconds", "Configured latency budget.", registry=r)
        self.reloads = Counter(
            "fraud_reloads", "Hot reloads of the model or the rules, by result.", ["artifact", "result"], registry=r
        )
        self.consumer_lag = Gauge(
            "fraud_consumer_lag", "Messages behind the high watermark.", ["topic", "partition"], registry=r
        )
        self.state_backlog = Gauge(
            "fraud_state_backlog_events",
            "Events decided while Redis was unavailable, waiting to be recorded in rule state.", registry=r,
        )
        self.state_unrecorded = Counter(
            "fraud_state_unrecorded_events",
            "Events decided while Redis was unavailable that overflowed the backlog: never recorded in rule state.",
            registry=r,
        )
        self.internal_errors = Counter(
            "fraud_internal_errors", "Messages dead-lettered because deciding them hit a bug (see the log).",
            registry=r,
        )
        self.publish_retries = Counter(
            "fraud_publish_retries", "Output records whose delivery failed and was retried.", registry=r
        )
        self.shadow_flags = Counter(
            "fraud_shadow_flags", "Events the shadow model would flag (it never changes a decision).", registry=r
        )
        self.shadow_disagreements = Counter(
            "fraud_shadow_disagreements", "Events where only one of the served and the shadow model flags.", ["kind"],
            registry=r,
        )
        self.shadow_info = Gauge("fraud_shadow_model_info", "The shadow model being scored.", ["version", "name"],
                                 registry=r)
        self.verdicts = Counter(
            "fraud_verdicts", "Analysts' verdicts by what the worker had decided.", ["decision", "verdict"], registry=r
        )
        self.feature_psi = Gauge(
            "fraud_feature_psi", "Population stability index of a model feature over the drift window.", ["feature"],
            registry=r,
        )
        for kind in ("shadow_only", "served_only"):
            self.shadow_disagreements.labels(kind)
        for decision in ("flag", "pass"):
            for verdict in ("fraud", "legit"):
                self.verdicts.labels(decision, verdict)
        for outcome in ("scored", "dead_letter"):
            self.events.labels(outcome)
        for action in ("allow", "review", "block"):
            self.decisions.labels("pass" if action == "allow" else "flag", action)
        for artifact in ("model", "rules", "shadow"):
            for result in ("ok", "refused"):
                self.reloads.labels(artifact=artifact, result=result)
        for cause in ("redis_unavailable", "state_error", "model_error"):
            self.degraded.labels(cause)

    def declare_rules(self, rules: RuleSet) -> None:
        """Start each rule's series at 0 (hits, errors, verdicts), so that `increase()` and `rate()` see a rule's
        first hit or verdict; series of rules no longer in the file stay until the worker restarts."""
        for rule in rules.rules:
            (self.rule_hits if rule.mode == "live" else self.shadow_rule_hits).labels(rule.id, rule.action)
            self.rule_errors.labels(rule.id)
            if rule.mode == "live":
                for verdict in ("fraud", "legit"):
                    self.rule_verdicts.labels(rule.id, verdict)

    def set_model(self, name: str, version: str, threshold: float, expected_alert_rate: float) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version, name=name).set(1)
        self.model_threshold.set(threshold)
        self.model_expected_alert_rate.set(expected_alert_rate)

    @property
    def serving(self) -> bool:
        return self._serving

    def serve(self, port: int, address: str) -> None:
        """Expose /metrics on `address:port` in a background thread (port 0 disables it); once per process."""
        if port and not self._serving:
            start_http_server(port, addr=address, registry=self.registry)
        self._serving = True
