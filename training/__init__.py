"""Offline side: synthetic data, the Keras autoencoder, thresholds, evaluation and ONNX export."""
