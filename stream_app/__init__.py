"""Serving: event schema, features, scoring, rules, state, decision, metrics and the Faust app.

Nothing in this package imports TensorFlow.
"""
