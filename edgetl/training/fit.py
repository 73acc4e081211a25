"""One training phase: compile, fit, one history row per epoch and a progress line per epoch (shared
by every finetune strategy and prune's recovery)."""

from __future__ import annotations

import time
from typing import Any


class _EpochPrinter:
    """Keras callback printing one line per epoch to stderr (progress for long runs)."""

    def __new__(cls, phase: str, total: int, verbose: bool):
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
                self._bar.advance()
                self._bar.print(f"[{phase}] epoch {epoch + 1}/{total}  loss {logs.get('loss', float('nan')):.4f}  "
                      f"acc {logs.get('accuracy', float('nan')):.3f}  "
                      f"val_loss {logs.get('val_loss', float('nan')):.4f}  "
                      f"val_acc {logs.get('val_accuracy', float('nan')):.3f}  "
                      f"({time.perf_counter() - self.start:.1f}s)")

        return Printer()


def train_phase(model, train_ds, val_ds, epochs: int, lr: float, phase: str, verbose: bool, history: list,
         callbacks: tuple = (), loss: Any = "sparse_categorical_crossentropy", metrics: tuple = ("accuracy",)):
    """Compile, train and append one history row per epoch (shared with prune's recovery)."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=list(metrics))
    # shuffle=False: the tf.data pipeline shuffles itself (Keras warns otherwise).
    result = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, shuffle=False,
                       callbacks=[*callbacks, _EpochPrinter(phase, epochs, verbose)])
    keys = list(result.history)
    for epoch in range(len(result.history[keys[0]]) if keys else 0):  # fewer than epochs after early stopping
        history.append({"phase": phase, "epoch": len(history) + 1,
                        **{k: float(result.history[k][epoch]) for k in keys}})


def evaluate(model, val_ds) -> dict[str, float]:
    loss, accuracy = model.evaluate(val_ds, verbose=0)
    return {"val_loss": float(loss), "val_accuracy": float(accuracy)}
