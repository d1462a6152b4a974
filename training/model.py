"""The Keras autoencoder: scaling inside the graph, trained on normal rows, scored by reconstruction error;
and the one serving graph that adds a supervised head to it (`with_head`).

The serving graph takes the raw feature vector and returns `score` (per-row mean squared reconstruction error
in scaled space, or the hybrid score) and `feature_errors` (per-feature squared errors), both float32.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import tensorflow as tf

from fraudmon.core.errors import TrainingError
from training.data import scaling_stats
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
    """The serving model (raw features → score, feature_errors) and how training went."""

    model: tf.keras.Model
    config: AutoencoderConfig
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    seconds: float = 0.0

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores `[n]` and per-feature errors `[n, f]` (float32), as the exported graph computes them."""
        return predict(self.model, x)

    def scaled(self, x: np.ndarray) -> np.ndarray:
        """The features as the graph scales them (training mean and standard deviation)."""
        layer = self.model.get_layer("scale")
        mean, variance = layer.mean.numpy().reshape(-1), layer.variance.numpy().reshape(-1)
        return ((np.asarray(x, dtype=np.float64) - mean) / np.sqrt(variance)).astype(np.float32)


def predict(model: tf.keras.Model, x: np.ndarray, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """A serving model's scores `[n]` and per-feature errors `[n, f]` (float32)."""
    scores, errors = model.predict(np.asarray(x, dtype=np.float32), batch_size=batch_size, verbose=0)
    return scores.astype(np.float32), errors.astype(np.float32)


def with_head(autoencoder: tf.keras.Model, head: SupervisedHead, combination: Combination) -> tf.keras.Model:
    """One serving graph: raw features → scaling → autoencoder → per-feature errors → the head's logit on the
    scaled features and log errors → `score` = exp(soft_limit(s)), s = alpha log(ae + eps) + beta logit + gamma
    (`Combination`).
    `feature_errors` stays the autoencoder's, which the explanations use."""
    ae_score, errors = autoencoder.outputs
    scaled = autoencoder.get_layer("scale").output
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

    score = tf.keras.layers.Lambda(combine, name="hybrid_score")([ae_score, logit])
    return tf.keras.Model(autoencoder.input, [score, errors], name="fraud_hybrid")



def set_seed(seed: int) -> None:
    """Seed Python, numpy and TensorFlow, and make TensorFlow ops deterministic."""
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_models(
    n_features: int, config: AutoencoderConfig, mean: np.ndarray, variance: np.ndarray
) -> tuple[tf.keras.Model, tf.keras.Model]:
    """(trainer: scaled → reconstruction, serving: raw → score, feature_errors), sharing their layers."""
    if config.loss not in LOSSES:
        raise TrainingError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")
    regularizer = tf.keras.regularizers.l2(config.l2) if config.l2 else None
    widths = [*config.hidden, *reversed(config.hidden[:-1])]
    layers = [
        tf.keras.layers.Dense(w, activation=config.activation, kernel_regularizer=regularizer,
                              name=f"{'encoder' if i < len(config.hidden) else 'decoder'}_{i}")
        for i, w in enumerate(widths)
    ]
    layers.append(tf.keras.layers.Dense(n_features, name="reconstruction"))

    def reconstruct(t: tf.Tensor) -> tf.Tensor:
        for layer in layers:
            t = layer(t)
        return t

    scaled_in = tf.keras.Input(shape=(n_features,), name="scaled")
    trainer = tf.keras.Model(scaled_in, reconstruct(scaled_in), name="autoencoder")

    raw = tf.keras.Input(shape=(n_features,), name="features")
    scaled = tf.keras.layers.Normalization(mean=mean, variance=variance, name="scale")(raw)
    errors = tf.keras.layers.Lambda(lambda p: tf.square(p[0] - p[1]), name="feature_errors")(
        [scaled, reconstruct(scaled)]
    )
    score = tf.keras.layers.Lambda(lambda e: tf.reduce_mean(e, axis=-1), name="score")(errors)
    serving = tf.keras.Model(raw, [score, errors], name="fraud_autoencoder")
    return trainer, serving


def train_autoencoder(
    x_train: np.ndarray, x_val: np.ndarray, config: AutoencoderConfig, verbose: int = 1
) -> TrainedAutoencoder:
    """Fit on `x_train` (raw features; normal rows), early-stop on the validation reconstruction loss."""
    started = time.perf_counter()
    set_seed(config.seed)
    mean, variance = (stat.astype(np.float32) for stat in scaling_stats(x_train))
    trainer, serving = build_models(x_train.shape[1], config, mean, variance)
    std = np.sqrt(variance)
    train_scaled = ((x_train - mean) / std).astype(np.float32)
    val_scaled = ((x_val - mean) / std).astype(np.float32)
    loss = {"mse": "mse", "mae": "mae", "huber": tf.keras.losses.Huber()}[config.loss]
    trainer.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate), loss=loss)
    stop = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                            restore_best_weights=True)
    fit = trainer.fit(
        train_scaled, train_scaled, validation_data=(val_scaled, val_scaled), epochs=config.epochs,
        batch_size=config.batch_size, shuffle=True, callbacks=[stop], verbose=verbose,
    )
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    best = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else len(history.get("loss", []))
    return TrainedAutoencoder(serving, config, history, best, time.perf_counter() - started)
