"""The base layer: configuration, errors, logging, the model card. Imports nothing from the layers above
(`stream_app` serving, `training`, `fraudmon.tools` and `fraudmon.cli`)."""
