"""The figures of a training run and an evaluation: training curves and confusion matrices rendered to PNG
bytes with matplotlib's Agg canvas, and the model's layer graph drawn by Keras's `plot_model`.

No pyplot: figures are built directly, so nothing depends on (or changes) a global backend or display.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    import keras


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def training_curves_png(history: Mapping[str, Sequence[float]], best_epoch: int | None = None) -> bytes:
    """Loss and accuracy per epoch, training and validation side by side.

    `history` maps `epoch` (1-based) and the metric names `loss`, `accuracy`, `val_loss`, `val_accuracy`
    to one value per epoch; missing metrics are left out of the plot. `best_epoch`, if given, is marked.
    """
    epochs = list(history["epoch"])
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    for axes, metric, title in zip(figure.subplots(1, 2), ("loss", "accuracy"), ("Loss", "Accuracy")):
        for key, name, style in ((metric, "training", "-"), (f"val_{metric}", "validation", "--")):
            if key in history and len(history[key]) == len(epochs):
                axes.plot(epochs, history[key], style, marker="o" if len(epochs) <= 30 else None,
                          markersize=3, label=name)
        if best_epoch:
            axes.axvline(best_epoch, color="grey", linestyle=":", label=f"kept (epoch {best_epoch})")
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel("cross-entropy" if metric == "loss" else "accuracy")
        if metric == "accuracy":
            axes.set_ylim(-0.02, 1.02)
        else:  # an early spike would flatten the rest of the curve
            values = [v for key in (metric, f"val_{metric}") for v in history.get(key, [])]
            if values:
                axes.set_ylim(0, min(max(values), 3 * float(np.median(values))) * 1.05 + 1e-6)
        axes.grid(alpha=0.3)
        axes.legend()
    return _png(figure)


def confusion_matrix_png(matrix: np.ndarray, labels: Sequence[str], title: str = "Confusion matrix") -> bytes:
    """Counts per (true label, predicted label), with the class names on both axes and the count in each cell."""
    matrix = np.asarray(matrix)
    many = len(labels) > 30  # past that, cell numbers and full-size names no longer fit
    size = min(max(4.0, 0.7 * len(labels) + 2.5), 24.0)
    figure = Figure(figsize=(size + 1.0, size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    colorbar = figure.colorbar(image, ax=axes, shrink=0.8, label="videos")
    colorbar.locator = MaxNLocator(integer=True)
    colorbar.update_ticks()
    ticks = np.arange(len(labels))
    font = 5 if many else None
    axes.set_xticks(ticks, labels, rotation=90 if many else 45, ha="center" if many else "right", fontsize=font)
    axes.set_yticks(ticks, labels, fontsize=font)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title(title)
    threshold = matrix.max() / 2.0 if matrix.size else 0
    for row in range(0 if not many else matrix.shape[0], matrix.shape[0]):
        for col in range(matrix.shape[1]):
            axes.text(col, row, str(int(matrix[row, col])), ha="center", va="center",
                      color="white" if matrix[row, col] > threshold else "black")
    return _png(figure)


def model_plot(model: keras.Model, path: str) -> str | None:
    """Draw `model`'s layers with their shapes to the local PNG `path`; returns None, or why it could not.

    `keras.utils.plot_model` needs the pydot package and Graphviz's `dot` program; without either it raises
    ImportError, whose message (what to install) is returned and nothing is written.
    """
    import keras

    try:
        keras.utils.plot_model(model, to_file=path, show_shapes=True, show_layer_names=True, dpi=96)
    except ImportError as exc:
        return str(exc)
    except Exception as exc:  # dot failing in another way must not cost a finished training run its model
        return f"drawing it failed: {type(exc).__name__}: {exc}"
    return None
