"""Turn results into a report read at a glance: ``report.md`` with PNG figures.

Every function is pure: data in, one file out, the written path returned. Figures are drawn on
``matplotlib.figure.Figure`` objects rendered by the Agg canvas, never through ``pyplot``: nothing
needs a display, no global backend is switched under a caller that has one, and no figure stays
alive in pyplot's registry after it is saved.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "Cell",
    "Table",
    "confusion_matrix",
    "markdown_table",
    "plot_confusion_matrix",
    "plot_label_efficiency",
    "plot_prediction_grid",
    "plot_training_curves",
    "write_report",
]

Cell: TypeAlias = "float | tuple[float, float] | str | None"
"""One result: top-1 %, (mean, std) over seeds, a note shown instead of a number (e.g. "not trained"), or
None when the run is missing."""
Table: TypeAlias = "Mapping[str, Mapping[str, Cell]]"
"""``table[row][column]``: rows are methods, columns are label fractions."""

_DPI = 120
_MISSING = "–"
_CORRECT_COLOR = "#1a7f37"
_WRONG_COLOR = "#cf222e"


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" grows the canvas to fit rotated tick labels and legends below the axes.
    fig.savefig(path, format="png", bbox_inches="tight", pad_inches=0.15)
    return path


def _cell_mean_std(cell: Cell) -> tuple[float, float] | None:
    """(mean, std) of a cell, std 0 for a single value; None for a missing or non-finite cell."""
    if cell is None or isinstance(cell, str):
        return None
    mean, std = (float(cell[0]), float(cell[1])) if isinstance(cell, tuple) else (float(cell), 0.0)
    if not math.isfinite(mean):
        return None
    return mean, std if math.isfinite(std) else 0.0


def _format_cell(cell: Cell) -> str:
    if isinstance(cell, str):
        return cell
    values = _cell_mean_std(cell)
    if values is None:
        return _MISSING
    return f"{values[0]:.1f} ± {values[1]:.1f}" if isinstance(cell, tuple) else f"{values[0]:.1f}"


def _palette(index: int) -> tuple[float, float, float, float]:
    cmap = colormaps["tab10"]
    return cmap(index % cmap.N)


def _to_numpy(values: Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


# --------------------------------------------------------------------------------------------- plots


def plot_label_efficiency(
    table: Table,
    path: Path,
    title: str = "Top-1 accuracy by fraction of labels",
    columns: Sequence[str] | None = None,
) -> Path:
    """Grouped bar chart: one group per label fraction (column), one bar per method (row).

    Args:
        table: ``table[row][column]`` = top-1 % or (mean, std) over seeds (drawn as an error bar);
            None or an absent key = missing cell (no bar).
        path: where to write the PNG.
        title: figure title.
        columns: column order; default: order of first appearance across rows.

    Each bar is labeled with its mean (one decimal); the std is shown by the error bar and in
    :func:`markdown_table`.
    """
    rows = list(table)
    if columns is None:
        columns = list(dict.fromkeys(col for row in rows for col in table[row]))
    if not rows or not columns:
        raise ValueError("plot_label_efficiency needs at least one row and one column of results.")

    n_rows, n_cols = len(rows), len(columns)
    bar_width = 0.8 / n_rows
    fig = _new_figure(max(6.0, 1.5 + n_cols * (0.45 * n_rows + 0.4)), 4.8)
    ax = fig.add_subplot()
    top = 0.0
    for i, row in enumerate(rows):
        xs, means, stds = [], [], []
        for j, col in enumerate(columns):
            values = _cell_mean_std(table[row].get(col))
            if values is not None:
                xs.append(j - 0.4 + bar_width * (i + 0.5))
                means.append(values[0])
                stds.append(values[1])
        # An empty bar call still registers the legend entry, so a method with no results is listed.
        ax.bar(
            xs,
            means,
            bar_width * 0.92,
            yerr=stds if any(stds) else None,
            capsize=3,
            color=_palette(i),
            label=row,
            error_kw={"elinewidth": 1, "ecolor": "#333333"},
        )
        for x, mean, std in zip(xs, means, stds, strict=True):
            ax.annotate(
                f"{mean:.1f}",
                (x, mean + std),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
            top = max(top, mean + std)
    ax.set_xticks(range(n_cols), list(columns))
    ax.set_xlim(-0.5, n_cols - 0.5)
    ax.set_ylim(0, top * 1.12 + 1 if top > 0 else 100)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_xlabel("labels used for fine-tuning")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(3, n_rows), frameon=False, fontsize=9)
    return _save(fig, path)


def _read_metrics(path: Path) -> list[dict[str, float]]:
    """Records of a ``metrics.jsonl``; [] if missing; unparsable lines (a crash mid-write) skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
    return records


def _series(records: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    points = [
        (float(r["step"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    return [p[0] for p in points], [p[1] for p in points]


# (metric key, line style) drawn in the accuracy panel; the kNN monitor is the main one.
_ACCURACY_KEYS = (("knn_top1", "-"), ("probe_top1", "--"), ("top1", ":"))


def plot_training_curves(curves: Mapping[str, Path], path: Path) -> Path:
    """One row of three panels: loss, learning rate, and top-1 during training, against step.

    Args:
        curves: stage name -> its ``metrics.jsonl`` (one JSON object per line with ``"step"``
            and some of ``"loss"``, ``"lr"``, ``"knn_top1"``, ``"probe_top1"``, ``"top1"``).
            Missing or empty files are skipped; the figure is still written.
        path: where to write the PNG.

    Each stage keeps one colour in every panel. The accuracy panel draws ``knn_top1`` (solid) and,
    when logged, ``probe_top1`` (dashed, online linear probe) and ``top1`` (dotted), in %.
    """
    fig = _new_figure(15.0, 4.0)
    axes = fig.subplots(1, 3)
    loss_ax, lr_ax, acc_ax = axes
    drawn: dict[Axes, int] = {ax: 0 for ax in axes}
    for i, (stage, metrics_path) in enumerate(curves.items()):
        records = _read_metrics(metrics_path)
        color = _palette(i)
        for ax, key in ((loss_ax, "loss"), (lr_ax, "lr")):
            steps, values = _series(records, key)
            if steps:
                # A marker keeps a single logged point visible (a line needs two).
                marker = "o" if len(steps) == 1 else None
                ax.plot(steps, values, color=color, lw=1.2, marker=marker, ms=3, label=stage)
                drawn[ax] += 1
        for key, style in _ACCURACY_KEYS:
            steps, values = _series(records, key)
            if steps:
                label = stage if key == "knn_top1" else f"{stage} ({key})"
                acc_ax.plot(steps, values, style, color=color, lw=1.5, marker="o", ms=3, label=label)
                drawn[acc_ax] += 1
    for ax, name, ylabel in (
        (loss_ax, "Training loss", "loss"),
        (lr_ax, "Learning rate", "learning rate"),
        (acc_ax, "kNN top-1 during training", "top-1 accuracy (%)"),
    ):
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn[ax]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    # Stages' losses live on different scales (NT-Xent ~5, cross-entropy ~1, distillation at tau = 0.1
    # up to ~100): a log axis keeps each curve's shape readable.
    if drawn[loss_ax] and all(v > 0 for line in loss_ax.get_lines() for v in line.get_ydata()):
        loss_ax.set_yscale("log")
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrix(
    labels: Tensor | np.ndarray | Sequence[int],
    predictions: Tensor | np.ndarray | Sequence[int],
    num_classes: int,
) -> np.ndarray:
    """Counts ``matrix[true, predicted]`` as a (num_classes, num_classes) int64 array."""
    true = _to_numpy(labels).astype(np.int64).ravel()
    pred = _to_numpy(predictions).astype(np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"labels and predictions differ in length: {true.size} vs {pred.size}.")
    for name, values in (("labels", true), ("predictions", pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must lie in [0, {num_classes}), got range [{values.min()}, {values.max()}]; "
                "check num_classes and drop ignored (-1) rows first."
            )
    counts = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def plot_confusion_matrix(
    matrix: np.ndarray,
    classes: Sequence[str],
    path: Path,
    title: str = "Confusion matrix (rows: true class, % of row)",
) -> Path:
    """Row-normalised confusion matrix as a heat map, cells annotated with percentages.

    Cells are annotated up to 30 classes (beyond that the numbers are unreadable); class names
    are drawn up to 60 classes, the x labels rotated 45°.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    k = len(classes)
    if matrix.shape != (k, k):
        raise ValueError(f"matrix has shape {matrix.shape}, expected ({k}, {k}) for {k} classes.")
    row_sums = matrix.sum(axis=1, keepdims=True)
    percent = np.divide(100.0 * matrix, row_sums, out=np.zeros_like(matrix), where=row_sums > 0)

    side = min(max(5.0, 0.5 * k + 2.0), 14.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of true class")
    if k <= 60:
        fontsize = 9 if k <= 15 else 7
        ax.set_xticks(
            range(k), list(classes), rotation=45, ha="right", rotation_mode="anchor", fontsize=fontsize
        )
        ax.set_yticks(range(k), list(classes), fontsize=fontsize)
    if k <= 30:
        fontsize = 8 if k <= 12 else 6
        for (i, j), value in np.ndenumerate(percent):
            if row_sums[i, 0] == 0:  # class absent from the test set: no recall to show
                ax.text(j, i, _MISSING, ha="center", va="center", fontsize=fontsize, color="gray")
                continue
            ax.text(
                j,
                i,
                f"{value:.0f}",
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if value > 55 else "black",
            )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = matrix.sum()
    accuracy = 100.0 * np.trace(matrix) / total if total > 0 else float("nan")
    ax.set_title(f"{title}\naccuracy {accuracy:.1f}% over {int(total)} images")
    return _save(fig, path)


def _images_hwc(images: Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) uint8 or float in [0, 1] -> (N, H, W, C) float in [0, 1]."""
    array = _to_numpy(images)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, got shape {array.shape}.")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    else:
        array = array.astype(np.float32)
        lo, hi = float(array.min(initial=0.0)), float(array.max(initial=0.0))
        if lo < -0.01 or hi > 1.01:
            raise ValueError(
                f"float images must be in [0, 1], got range [{lo:.2f}, {hi:.2f}]; undo the "
                "mean/std normalisation (or pass uint8 images) before plotting."
            )
    return np.clip(array, 0.0, 1.0).transpose(0, 2, 3, 1)


def plot_prediction_grid(
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int],
    predictions: Tensor | np.ndarray | Sequence[int],
    classes: Sequence[str],
    path: Path,
    max_images: int = 32,
) -> Path:
    """Grid of test images, each titled "pred (true)": green when correct, red when wrong.

    Args:
        images: (N, C, H, W), uint8 or float in [0, 1] (not mean/std-normalised); C = 1 is drawn
            with a gray colormap.
        labels, predictions: (N,) class indices.
        classes: class names.
        path: where to write the PNG.
        max_images: the first ``max_images`` images are drawn, 8 per row.
    """
    pictures = _images_hwc(images)[:max_images]
    true = _to_numpy(labels).astype(np.int64).ravel()[: len(pictures)]
    pred = _to_numpy(predictions).astype(np.int64).ravel()[: len(pictures)]
    n = len(pictures)
    if n == 0 or len(true) != n or len(pred) != n:
        raise ValueError(
            f"need at least one image and one label and prediction per image, got {n} images, "
            f"{len(true)} labels, {len(pred)} predictions."
        )
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig = _new_figure(1.6 * cols, 1.75 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, picture, t, p in zip(axes, pictures, true, pred, strict=False):
        if picture.shape[-1] == 1:
            ax.imshow(picture[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(picture)
        ax.set_title(
            f"{classes[p]} ({classes[t]})", fontsize=8, color=_CORRECT_COLOR if p == t else _WRONG_COLOR
        )
    for ax in axes:
        ax.axis("off")
    correct = int((true == pred).sum())
    fig.suptitle(f"predicted (true): {correct}/{n} correct", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ markdown


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(table: Table, columns: Sequence[str], row_header: str = "Method") -> str:
    """A GitHub-flavoured markdown table: one row per method, one column per label fraction.

    Cells read ``72.3`` (single value) or ``72.3 ± 0.4`` (mean ± std), one decimal; a missing
    or non-finite cell reads "–".
    """
    lines = [
        "| " + " | ".join([_escape(row_header), *map(_escape, columns)]) + " |",
        "|" + "---|" + "---:|" * len(columns),
    ]
    for row, cells in table.items():
        formatted = [_format_cell(cells.get(col)) for col in columns]
        lines.append("| " + " | ".join([_escape(row), *formatted]) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    *,
    title: str,
    table: Table,
    columns: Sequence[str],
    figures: Mapping[str, Path],
    sections: Mapping[str, str] | None = None,
    command: str | None = None,
    summary: str | None = None,
) -> Path:
    """Write ``out_dir/report.md``: title, command, results table (with ``summary``, one sentence on what
    it shows, under it), figures, then extra sections.

    Args:
        out_dir: report directory (created if needed).
        title: top-level heading.
        table, columns: results, see :func:`markdown_table`.
        figures: caption -> PNG path; embedded with a path relative to ``out_dir`` so the report
            directory can be moved or browsed on GitHub. A missing file is reported as missing
            rather than embedded as a broken image.
        sections: heading -> markdown text (e.g. machine, wall times, which claims reproduced).
        command: the command line that produced the results, shown in a code block.

    Returns:
        The path of ``report.md``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n"]
    if command:
        parts.append(f"Produced by:\n\n```bash\n{command}\n```\n")
    parts.append(
        "## Results\n\nTop-1 accuracy (%); mean ± std over seeds where several were run; "
        f"{_MISSING} = not run.\n\n" + markdown_table(table, columns)
    )
    if summary:
        parts.append(f"**{summary}**\n")
    if figures:
        parts.append("## Figures\n")
        for caption, figure in figures.items():
            figure = Path(figure)
            relative = Path(os.path.relpath(figure.resolve(), out_dir.resolve())).as_posix()
            if figure.is_file():
                parts.append(f"![{caption}]({relative})\n\n*{caption}*\n")
            else:
                parts.append(f"*{caption}: figure missing (`{relative}`).*\n")
    for heading, text in (sections or {}).items():
        parts.append(f"## {heading}\n\n{text.strip()}\n")
    report = out_dir / "report.md"
    report.write_text("\n".join(parts))
    return report
