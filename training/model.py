"""The Keras autoencoder, trained on scaled normal rows, and the one serving graph built around it: scaling,
reconstruction errors and, when a supervised head exists, the head and the combination (`serving_graph`).

The serving graph takes the raw feature vector and returns `score` (per-row mean squared reconstruction error
in scaled space, or the hybrid score) and `feature_errors` (per-feature squared errors), both float32.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import tensorflow as tf

from fraudmon.core.errors import TrainingError
from training.data import StandardScaler
from training.hybrid import LOGIT_LIMIT, SCORE_EPSILON, Combination, SupervisedHead, soft_limit

LOSSES = ("mse", "mae", "huber")


@dataclass
class AutoencoderConfig:
    """Hyper-parameters; `hidden` lists the encoder widths (the decoder mirrors them)."""

    hidden: tuple[int, ...] = (64, 32, 16)
    activation: str = "relu"
    loss: str = "mse"
    epochs: int = 80
    batch_size: int = 256
    learning_rate: float = 1e-3
    patience: int = 10
    l2: float = 0.0
    seed: int = 42

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}


@dataclass
class TrainedAutoencoder:
    """The fitted network (scaled features → reconstruction) and how training went."""

    model: tf.keras.Model
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    seconds: float = 0.0


def set_seed(seed: int) -> None:
    """Seed Python, numpy and TensorFlow, and make TensorFlow ops deterministic."""
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_autoencoder(n_features: int, config: AutoencoderConfig) -> tf.keras.Model:
    """Dense encoder (`config.hidden`), mirrored decoder and a linear reconstruction, on scaled features."""
    if config.loss not in LOSSES:
        raise TrainingError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")
    regularizer = tf.keras.regularizers.l2(config.l2) if config.l2 else None
    widths = [*config.hidden, *reversed(config.hidden[:-1])]
    t = scaled = tf.keras.Input(shape=(n_features,), name="scaled")
    for i, width in enumerate(widths):
        t = tf.keras.layers.Dense(width, activation=config.activation, kernel_regularizer=regularizer,
                                  name=f"{'encoder' if i < len(config.hidden) else 'decoder'}_{i}")(t)
    return tf.keras.Model(scaled, tf.keras.layers.Dense(n_features, name="reconstruction")(t), name="autoencoder")


def train_autoencoder(scaled_train: np.ndarray, scaled_val: np.ndarray | None, config: AutoencoderConfig,
                      verbose: int = 1) -> TrainedAutoencoder:
    """Fit on scaled normal rows; with `scaled_val`, early-stop on its reconstruction loss (best weights kept),
    without it run `config.epochs` epochs (a refit with the epochs an earlier fit chose)."""
    started = time.perf_counter()
    set_seed(config.seed)
    model = build_autoencoder(scaled_train.shape[1], config)
    loss = {"mse": "mse", "mae": "mae", "huber": tf.keras.losses.Huber()}[config.loss]
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate), loss=loss)
    callbacks, validation = [], None
    if scaled_val is not None:
        validation = (scaled_val, scaled_val)
        callbacks.append(tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                          restore_best_weights=True))
    fit = model.fit(scaled_train, scaled_train, validation_data=validation, epochs=config.epochs,
                    batch_size=config.batch_size, shuffle=True, callbacks=callbacks, verbose=verbose)
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    best = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else len(history.get("loss", []))
    return TrainedAutoencoder(model, history, best, time.perf_counter() - started)


def serving_graph(scaler: StandardScaler, autoencoder: tf.keras.Model, head: SupervisedHead | None = None,
                  combination: Combination | None = None) -> tf.keras.Model:
    """One graph: raw features → scaling → autoencoder → per-feature squared errors → `score`, their mean; with a
    head, its logit on the scaled features and log errors combines with it into `score` = exp(soft_limit(s)),
    s = alpha log(ae + eps) + beta logit + gamma (`Combination`). `feature_errors` stays the autoencoder's, which
    the explanations use."""
    raw = tf.keras.Input(shape=(autoencoder.input_shape[-1],), name="features")
    scaled = tf.keras.layers.Normalization(mean=scaler.mean.astype(np.float32),
                                           variance=np.square(scaler.std).astype(np.float32), name="scale")(raw)
    t = scaled
    for layer in autoencoder.layers[1:]:
        t = layer(t)
    errors = tf.keras.layers.Lambda(lambda p: tf.square(p[0] - p[1]), name="feature_errors")([scaled, t])
    score = tf.keras.layers.Lambda(lambda e: tf.reduce_mean(e, axis=-1), name="score")(errors)
    if head is None:
        return tf.keras.Model(raw, [score, errors], name="fraud_autoencoder")
    log_errors = tf.keras.layers.Lambda(lambda e: tf.math.log(e + 1.0), name="log_errors")(errors)  # no Log1p in ONNX
    inputs = tf.keras.layers.Concatenate(name="head_inputs")([scaled, log_errors])
    dense = tf.keras.layers.Dense(1, name="head")
    logit = dense(inputs)
    dense.set_weights([head.coef_.reshape(-1, 1).astype(np.float32), np.array([head.intercept_], np.float32)])
    alpha, beta, gamma = (float(v) for v in (combination.alpha_, combination.beta_, combination.gamma_))

    def combine(parts: list[tf.Tensor]) -> tf.Tensor:
        logit = tf.clip_by_value(parts[1][:, 0], -LOGIT_LIMIT, LOGIT_LIMIT)
        log_score = alpha * tf.math.log(parts[0] + SCORE_EPSILON) + beta * logit + gamma
        return tf.exp(soft_limit(log_score, tf))

    hybrid = tf.keras.layers.Lambda(combine, name="hybrid_score")([score, logit])
    return tf.keras.Model(raw, [hybrid, errors], name="fraud_hybrid")


def predict(model: tf.keras.Model, x: np.ndarray, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """A serving graph's scores `[n]` and per-feature errors `[n, f]` (float32)."""
    scores, errors = model.predict(np.asarray(x, dtype=np.float32), batch_size=batch_size, verbose=0)
    return scores.astype(np.float32), errors.astype(np.float32)
