"""One training phase: compile, fit, one history row per epoch and a progress line per epoch (shared
by every finetune strategy and prune's recovery)."""

from __future__ import annotations

import time
from typing import Any


class _EpochPrinter:
    """Keras callback: a bar with the ETA of the phase on a terminal, one line per epoch (with images/s)."""

    def __new__(cls, phase: str, total: int, verbose: bool, images: int | None = None):
        import keras

        class Printer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                from ..console import progress

                self._progress = progress(total, f"training ({phase})", enabled=verbose)
                self._bar = self._progress.__enter__()

            def on_train_end(self, logs=None):
                self._progress.__exit__(None, None, None)

            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                if not verbose:
                    return
                logs = logs or {}
                seconds = time.perf_counter() - self.start
                rate = f", {images / seconds:.0f} images/s" if images else ""
                self._bar.advance()
                self._bar.print(f"[{phase}] epoch {epoch + 1}/{total}  loss {logs.get('loss', float('nan')):.4f}  "
                      f"acc {logs.get('accuracy', float('nan')):.3f}  "
                      f"val_loss {logs.get('val_loss', float('nan')):.4f}  "
                      f"val_acc {logs.get('val_accuracy', float('nan')):.3f}  "
                      f"({seconds:.1f}s{rate})")

        return Printer()


def _best_epoch_keeper(patience: int):
    """Early stopping on val loss that also restores the best epoch when the phase runs to its end
    (Keras' ``restore_best_weights`` restores only when it stops early)."""
    import keras

    class Keeper(keras.callbacks.EarlyStopping):
        def on_train_end(self, logs=None):
            if self.best_weights is not None and self.best_epoch != self._last_epoch:
                self.model.set_weights(self.best_weights)
            super().on_train_end(logs)

        def on_epoch_end(self, epoch, logs=None):
            self._last_epoch = epoch
            super().on_epoch_end(epoch, logs)

    return Keeper(monitor="val_loss", patience=patience, restore_best_weights=True)


def smoothed_sparse_crossentropy(smoothing: float):
    """Cross-entropy on probabilities against integer labels with ``smoothing`` of the target spread over
    the classes (Keras' sparse loss has no label smoothing)."""
    from keras import ops

    def loss(y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        log_p = ops.log(ops.clip(y_pred, 1e-7, 1.0))
        nll = -ops.squeeze(ops.take_along_axis(log_p, labels[:, None], axis=-1), -1)
        return (1.0 - smoothing) * nll - smoothing * ops.mean(log_p, axis=-1)

    return loss


def train_phase(model, train_ds, val_ds, epochs: int, lr: float, phase: str, verbose: bool, history: list,
         callbacks: tuple = (), loss: Any = "sparse_categorical_crossentropy", metrics: tuple = ("accuracy",),
         images: int | None = None, label_smoothing: float = 0.0, weight_decay: float = 0.0, patience: int = 0):
    """Compile, train and append one history row per epoch (shared with prune's recovery)."""
    import keras

    optimizer = keras.optimizers.AdamW(lr, weight_decay=weight_decay) if weight_decay else keras.optimizers.Adam(lr)
    if label_smoothing and loss == "sparse_categorical_crossentropy":
        loss = smoothed_sparse_crossentropy(label_smoothing)
    if patience and val_ds is not None:
        callbacks = (*callbacks, _best_epoch_keeper(patience))
    model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics))
    # shuffle=False: the tf.data pipeline shuffles itself (Keras warns otherwise).
    result = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, shuffle=False,
                       callbacks=[*callbacks, _EpochPrinter(phase, epochs, verbose, images)])
    keys = list(result.history)
    for epoch in range(len(result.history[keys[0]]) if keys else 0):  # fewer than epochs after early stopping
        history.append({"phase": phase, "epoch": len(history) + 1, "lr": lr,
                        **{k: float(result.history[k][epoch]) for k in keys}})


def evaluate(model, val_ds) -> dict[str, float]:
    if not model.compiled:  # a classifier trained through the cache's sub-models (cache.py)
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    loss, accuracy = model.evaluate(val_ds, verbose=0)
    return {"val_loss": float(loss), "val_accuracy": float(accuracy)}
