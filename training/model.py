"""The Keras autoencoder, trained on scaled normal rows, and the one serving graph built around it: the log of
money-shaped columns, scaling, reconstruction errors and, when a supervised part exists, the logistic head (or
the trees' logit as an input) and the combination (`serving_graph`).

The serving graph takes the raw feature vector and returns `score` (per-row mean squared reconstruction error
in scaled space, or the hybrid score) and `feature_errors` (per-feature squared errors), both float32.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import tensorflow as tf

from fraudmon.core.errors import TrainingError
from training.data import LogColumns, StandardScaler
from training.hybrid import LOGIT_LIMIT, SCORE_EPSILON, Combination, SupervisedHead, soft_limit
from training.trees import TREES_LOGIT, TreeHead

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


def serving_graph(columns: LogColumns, scaler: StandardScaler, autoencoder: tf.keras.Model,
                  head: SupervisedHead | TreeHead | None = None,
                  combination: Combination | None = None) -> tf.keras.Model:
    """One graph: raw features → log of the money-shaped columns → scaling → autoencoder → per-feature squared
    errors → `score`, their mean. With a head, its logit combines with it into `score` = exp(soft_limit(s)),
    s = alpha log(ae + eps) + beta logit + gamma (`Combination`), and `score_contributions` [batch, 2] gives
    each part's share of s (`Combination.contributions`). The logistic head is a layer on the scaled features
    and log errors; trees are a second input `trees_logit` [batch, 1], which `training.export.merge_trees` feeds
    from their own ONNX graph. `feature_errors` stays the autoencoder's, which the explanations use."""
    raw = tf.keras.Input(shape=(autoencoder.input_shape[-1],), name="features")
    log, scale = columns.log, columns.scale.astype(np.float32)
    logged = raw if not log.any() else tf.keras.layers.Lambda(  # no Log1p in ONNX
        lambda x: tf.where(log, tf.sign(x) * tf.math.log(1.0 + tf.abs(x) / scale), x), name="log_columns")(raw)
    scaled = tf.keras.layers.Normalization(mean=scaler.mean.astype(np.float32),
                                           variance=np.square(scaler.std).astype(np.float32), name="scale")(logged)
    t = scaled
    for layer in autoencoder.layers[1:]:
        t = layer(t)
    errors = tf.keras.layers.Lambda(lambda p: tf.square(p[0] - p[1]), name="feature_errors")([scaled, t])
    score = tf.keras.layers.Lambda(lambda e: tf.reduce_mean(e, axis=-1), name="score")(errors)
    if head is None:
        return tf.keras.Model(raw, [score, errors], name="fraud_autoencoder")
    if isinstance(head, TreeHead):
        inputs = [raw, tf.keras.Input(shape=(1,), name=TREES_LOGIT)]
        logit = inputs[1]
    else:
        inputs = raw
        log_errors = tf.keras.layers.Lambda(lambda e: tf.math.log(e + 1.0), name="log_errors")(errors)
        dense = tf.keras.layers.Dense(1, name="head")
        logit = dense(tf.keras.layers.Concatenate(name="head_inputs")([scaled, log_errors]))
        dense.set_weights([head.coef_.reshape(-1, 1).astype(np.float32), np.array([head.intercept_], np.float32)])
    alpha, beta, gamma, mu_a, mu_h = (float(v) for v in (combination.alpha_, combination.beta_, combination.gamma_,
                                                         combination.mu_a_, combination.mu_h_))

    def parts(tensors: list[tf.Tensor]) -> tf.Tensor:
        logit = tf.clip_by_value(tensors[1][:, 0], -LOGIT_LIMIT, LOGIT_LIMIT)
        return tf.stack([alpha * (tf.math.log(tensors[0] + SCORE_EPSILON) - mu_a), beta * (logit - mu_h)], axis=1)

    contributions = tf.keras.layers.Lambda(parts, name="score_contributions")([score, logit])
    hybrid = tf.keras.layers.Lambda(lambda c: tf.exp(soft_limit(tf.reduce_sum(c, axis=1) + mu_a, tf)),
                                    name="hybrid_score")(contributions)
    return tf.keras.Model(inputs, [hybrid, errors, contributions], name="fraud_hybrid")


def predict(model: tf.keras.Model, x: np.ndarray | list[np.ndarray],
            batch_size: int = 8192) -> list[np.ndarray]:
    """A serving graph's outputs (float32): scores `[n]`, per-feature errors `[n, f]` and, with a head, the
    parts' contributions `[n, 2]`. `x`: the features, or with trees [features, trees' logits]."""
    inputs = [np.asarray(v, dtype=np.float32) for v in x] if isinstance(x, list) else np.asarray(x, np.float32)
    return [out.astype(np.float32) for out in model.predict(inputs, batch_size=batch_size, verbose=0)]
