"""The training report: what was trained how, how well, per class; confusion matrix and curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_confusion(path: Path, classes: list[str], confusion: list[list[int]]) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global figure to leak

    figure = Figure(figsize=(1.2 * len(classes) + 2, 1.0 * len(classes) + 1.5))
    axes = figure.add_subplot()
    image = axes.imshow(confusion, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    peak = max(max(row) for row in confusion) or 1
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            axes.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def plot_curves(path: Path, history: dict[str, list[float]]) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.5))
    for index, metric in enumerate(("loss", "accuracy")):
        axes = figure.add_subplot(1, 2, index + 1)
        axes.plot(history[metric], label="training")
        axes.plot(history[f"val_{metric}"], label="held out")
        axes.set_xlabel("epoch")
        axes.set_title(metric)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def write(model_dir: Path, result: Any, history: dict[str, list[float]], options: Any) -> None:
    """report.md with the two plots beside it."""
    plot_confusion(model_dir / "confusion.png", result.classes, result.confusion)
    plot_curves(model_dir / "curves.png", history)
    lines = [
        f"# Training report: {result.name}",
        "",
        f"Command: `{options.command}`" if options.command else "",
        "",
        f"- photos: {result.train_count} for training, {result.validation_count} held out "
        f"(seed {options.seed}, {options.validation_fraction:.0%} of each class)",
        f"- bottlenecks: {result.computed} computed, {result.reused} reused from the cache",
        f"- held-out accuracy: **{result.accuracy:.1%}**"
        + (
            f"; {options.quantize} head: {result.quantized_accuracy:.1%}"
            if result.quantized_accuracy is not None
            else ""
        ),
        "- sizes: " + ", ".join(f"{k} {v / 1024:.0f} KB" for k, v in result.sizes.items()),
        "- seconds: " + ", ".join(f"{k} {v}" for k, v in result.seconds.items()),
        "",
        "| class | held-out accuracy |",
        "|---|---|",
        *(f"| {name} | {score:.0%} |" for name, score in result.per_class.items()),
        "",
        "![confusion matrix](confusion.png)",
        "",
        "![training curves](curves.png)",
    ]
    if result.unreadable:
        lines += ["", "Skipped (unreadable):", *(f"- {path}: {reason}" for path, reason in result.unreadable)]
    lines += [
        "",
        f"Served as `model={result.name}`: the section [{result.name}] of image_classification.config.",
        "Running workers pick the new section up with the next request that names it.",
    ]
    (model_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
