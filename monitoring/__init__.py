"""Prometheus configuration, alert rules, the Grafana dashboard and the helpers the tests use to check them."""
