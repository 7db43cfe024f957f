"""The training report: what was trained how, how well, per class; confusion matrix and curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scai.train import augment, head, plots


def write(model_dir: Path, result: Any, history: dict[str, list[float]], options: Any) -> None:
    """report.md with the two plots beside it."""
    plots.confusion(model_dir / "confusion.png", result.classes, result.confusion)
    plots.curves(model_dir / "curves.png", history)
    lines = [
        f"# Training report: {result.name}",
        "",
        f"Command: `{options.command}`" if options.command else "",
        "",
        f"- photos: {result.train_count} for training, {result.validation_count} held out "
        f"(seed {options.seed}, {options.validation_fraction:.0%} of each class)"
        + (f"; {augment.VARIANTS} augmented variants of each training photo" if options.augment else ""),
        f"- backbone: {options.base or 'default'}"
        + (
            f", top {options.fine_tune} layers fine-tuned for {options.fine_tune_epochs} epochs (the tuned network "
            f"scored {result.fine_tuned_accuracy:.1%} held out; the head below was then trained on its features)"
            if result.fine_tuned_accuracy is not None
            else ""
        ),
        f"- bottlenecks: {result.computed} computed, {result.reused} reused from the cache",
        f"- head: softmax on the L2-normalised features, {options.epochs} epochs "
        f"(dropout {head.DROPOUT}, Adam {head.LEARNING_RATE}, batch {head.BATCH_SIZE})",
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
