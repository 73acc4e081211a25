"""Model directories on disk: loading one (``load_trained``, one-line errors for broken files) and
writing one (``save_model_dir``: ``model.keras`` + ``edgetl.json`` + ``training.png``, for finetune and
prune alike)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..metadata import MODEL_FILE, ModelCard, read_model_metadata, sha256_file


def save_model_dir(directory: Path, model, card: ModelCard, history: list[dict[str, float]],
                   title: str) -> ModelCard:
    """``model.keras``, its card (``model_sha256`` filled in) and, with a history, ``training.png``:
    the one place a model directory's files are written (inside the caller's atomic directory)."""
    import dataclasses

    model.save(directory / MODEL_FILE)
    card = dataclasses.replace(card, model_sha256=sha256_file(directory / MODEL_FILE))
    card.write(directory)
    if history:
        plot_history(history, directory / "training.png", title=title)
    return card


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, ax in (("loss", ax_loss), ("accuracy", ax_acc)):
        ax.plot(epochs, [h.get(key) for h in history], "o-", label=f"train {key}")
        if any("val_" + key in h for h in history):
            ax.plot(epochs, [h.get("val_" + key) for h in history], "s-", label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_trained(model_dir: str | Path):
    """(keras model, metadata dict) from a model directory."""
    model_dir = Path(model_dir)
    metadata = read_model_metadata(model_dir)
    path = model_dir / MODEL_FILE
    if not path.exists():
        raise UsageError(f"{model_dir}: no {MODEL_FILE}")
    return load_keras_model(path), metadata


def check_keras_file(path: str | Path) -> None:
    """Without TensorFlow: the file exists and is a complete zip archive (a .keras file is one)."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path}: not a valid Keras file (truncated, or not a .keras zip archive)")

def load_keras_model(path: str | Path):
    """``keras.models.load_model`` with one-line errors: Keras reports a truncated file as "File not
    found", so the zip container is checked first."""
    import keras

    path = Path(path)
    check_keras_file(path)
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # corrupt members, foreign layers: one line, not a traceback
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"{path}: not a valid Keras file, Keras cannot load it ({first})") from None
