"""Report: every figure is a real PNG, confusion matrix by hand, markdown formatting, relative links."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from simclrv2.report import (
    confusion_matrix,
    markdown_table,
    plot_confusion_matrix,
    plot_label_efficiency,
    plot_prediction_grid,
    plot_training_curves,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLUMNS = ["10/class", "1%", "10%"]
TABLE: dict[str, dict[str, float | tuple[float, float] | None]] = {
    "Supervised": {"10/class": 21.4, "1%": (30.2, 1.1), "10%": (61.0, 0.4)},
    "Linear eval": {"10/class": (55.3, 0.8), "1%": 58.1, "10%": 60.7},
    "Fine-tuned (layer 1)": {"10/class": (60.2, 1.5), "1%": (66.9, 0.6), "10%": (79.4, 0.2)},
    "Self-distilled": {"1%": (68.8, 0.5), "10%": None},
    "Distilled (small student)": {"10/class": 50.0, "1%": float("nan"), "10%": (75.5, 0.3)},
}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def assert_png(path: Path, min_bytes: int = 5_000) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > min_bytes


def write_metrics(path: Path, records: list[dict[str, float]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_label_efficiency_png(tmp_path: Path) -> None:
    out = plot_label_efficiency(TABLE, tmp_path / "label_efficiency.png", columns=COLUMNS)
    assert out == tmp_path / "label_efficiency.png"
    assert_png(out)


def test_label_efficiency_default_column_order(tmp_path: Path) -> None:
    assert_png(plot_label_efficiency({"A": {"1%": 10.0, "10%": 20.0}}, tmp_path / "a.png"))
    with pytest.raises(ValueError, match="at least one"):
        plot_label_efficiency({}, tmp_path / "b.png")


def test_training_curves_png_and_missing_files(tmp_path: Path) -> None:
    steps = range(0, 200, 5)
    pretrain = [{"step": s, "loss": 6.0 - s / 50, "lr": min(1.0, s / 40) * 0.3} for s in steps]
    pretrain += [{"step": s, "knn_top1": 30 + s / 5, "probe_top1": 25 + s / 5} for s in (50, 100, 150)]
    finetune = [{"step": s, "loss": 2.0 / (1 + s), "lr": 0.01} for s in steps]
    with (tmp_path / "broken.jsonl").open("w") as f:  # a crash mid-write leaves half a line
        f.write(json.dumps({"step": 1, "loss": 1.0}) + "\n" + '{"step": 2, "lo')
    curves = {
        "pretrain": write_metrics(tmp_path / "pretrain.jsonl", pretrain),
        "finetune": write_metrics(tmp_path / "finetune.jsonl", finetune),
        "missing": tmp_path / "does_not_exist.jsonl",
        "empty": write_metrics(tmp_path / "empty.jsonl", []),
        "broken": tmp_path / "broken.jsonl",
    }
    assert_png(plot_training_curves(curves, tmp_path / "curves.png"))
    # Nothing to draw at all still gives a figure (with "no data" panels), not an exception.
    assert_png(plot_training_curves({"missing": tmp_path / "nope.jsonl"}, tmp_path / "none.png"))


def test_confusion_matrix_by_hand() -> None:
    labels = [0, 0, 1, 1, 1, 2]
    predictions = [0, 1, 1, 1, 2, 0]
    expected = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 0]])
    result = confusion_matrix(labels, predictions, 3)
    np.testing.assert_array_equal(result, expected)
    assert np.issubdtype(result.dtype, np.integer)
    np.testing.assert_array_equal(confusion_matrix(torch.tensor(labels), np.array(predictions), 3), expected)
    with pytest.raises(ValueError, match="must lie in"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix([0, 1], [0], 3)


def test_confusion_matrix_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    predictions = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 10, 500))
    matrix = confusion_matrix(labels, predictions, 10)
    matrix[3] = 0  # a class absent from the test set must not divide by zero
    assert_png(plot_confusion_matrix(matrix, CLASSES, tmp_path / "confusion.png"))
    with pytest.raises(ValueError, match="expected"):
        plot_confusion_matrix(matrix, CLASSES[:5], tmp_path / "bad.png")


@pytest.mark.parametrize("kind", ["rgb_uint8", "rgb_float_tensor", "gray_float"])
def test_prediction_grid_png(tmp_path: Path, kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    n = 20
    if kind == "rgb_uint8":
        images: torch.Tensor | np.ndarray = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8).numpy()
    elif kind == "rgb_float_tensor":
        images = torch.rand(n, 3, 32, 32, generator=gen)
    else:
        images = torch.rand(n, 1, 28, 28, generator=gen).numpy()
    labels = torch.randint(0, 10, (n,), generator=gen)
    predictions = torch.where(torch.rand(n, generator=gen) < 0.6, labels, (labels + 1) % 10)
    assert_png(plot_prediction_grid(images, labels, predictions, CLASSES, tmp_path / f"{kind}.png"))


def test_prediction_grid_rejects_normalised_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="normalisation"):
        plot_prediction_grid(torch.randn(4, 3, 8, 8) * 3, [0] * 4, [0] * 4, CLASSES, tmp_path / "x.png")


def test_prediction_grid_max_images(tmp_path: Path) -> None:
    images = torch.rand(50, 3, 8, 8)
    out = plot_prediction_grid(images, [1] * 50, [1] * 50, CLASSES, tmp_path / "g.png", max_images=3)
    assert_png(out, min_bytes=1_000)


def test_markdown_table_formats_cells() -> None:
    text = markdown_table(TABLE, COLUMNS)
    lines = text.strip().splitlines()
    assert lines[0] == "| Method | 10/class | 1% | 10% |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| Supervised | 21.4 | 30.2 ± 1.1 | 61.0 ± 0.4 |"
    # Absent key, None and NaN all read as missing.
    assert lines[5] == "| Self-distilled | – | 68.8 ± 0.5 | – |"
    assert lines[6] == "| Distilled (small student) | 50.0 | – | 75.5 ± 0.3 |"
    assert len(lines) == 2 + len(TABLE)


def test_write_report_links_existing_figures(tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    figure_dir = out_dir / "figures"
    figures = {
        "Top-1 by label fraction": plot_label_efficiency(TABLE, figure_dir / "label_efficiency.png"),
        "Confusion matrix": plot_confusion_matrix(np.eye(3) * 5, ["a", "b", "c"], figure_dir / "cm.png"),
    }
    report = write_report(
        out_dir,
        title="SimCLRv2 on CIFAR-10",
        table=TABLE,
        columns=COLUMNS,
        figures={**figures, "Not drawn": tmp_path / "missing.png"},
        sections={"Machine": "2 CPU cores, no GPU.", "Claims": "- fine-tuning from layer 1 helps: yes"},
        command="python -m simclrv2.pipeline --preset cifar10",
    )
    assert report == out_dir / "report.md"
    text = report.read_text()
    assert text.startswith("# SimCLRv2 on CIFAR-10\n")
    assert "python -m simclrv2.pipeline --preset cifar10" in text
    assert markdown_table(TABLE, COLUMNS) in text
    links = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", text)
    assert [caption for caption, _ in links] == list(figures)
    for _, link in links:
        assert not Path(link).is_absolute()
        assert_png(out_dir / link)
    assert "figure missing" in text
    assert "## Machine\n\n2 CPU cores, no GPU." in text
    assert text.index("## Results") < text.index("## Figures") < text.index("## Machine")


def test_a_not_trained_cell_shows_its_note_and_the_summary_sits_under_the_table(tmp_path: Path) -> None:
    table = {"Fine-tuned (layer 1)": {"1%": 80.0}, "Supervised (labels only)": {"1%": "not trained"}}
    assert "| Supervised (labels only) | not trained |" in markdown_table(table, ["1%"])
    plot_label_efficiency(table, tmp_path / "chart.png", columns=["1%"])  # the note is not drawn as a bar
    text = write_report(
        tmp_path, title="t", table=table, columns=["1%"], figures={}, summary="One sentence on the table."
    ).read_text()
    assert text.index("| Supervised") < text.index("**One sentence on the table.**") < len(text)


def test_summary_sentence_says_where_pretraining_beats_supervised_and_by_how_much() -> None:
    from simclrv2.engine.pipeline import summary_sentence

    table = {
        "Fine-tuned (layer 1)": {"10/class": {"mean": 71.2}, "1%": {"mean": 80.0}, "10%": {"mean": 84.0}},
        "Supervised (labels only)": {"10/class": {"mean": 45.3}, "1%": {"mean": 79.5}, "10%": {"mean": 86.1}},
    }
    text = summary_sentence(table, ["10/class", "1%", "10%"], "Fine-tuned (layer 1)")
    assert text == (
        "Pretraining without labels, then fine-tuning from head layer 1, beats the same network trained on "
        "the labels alone at 10/class (71.2% vs 45.3%, +25.9 points) and 1% (80.0% vs 79.5%, +0.5 points), "
        "but does not beat it at 10% (84.0% vs 86.1%, -2.1 points)."
    )
    table["Supervised (labels only)"]["10/class"]["trained"] = False  # stayed at chance: no comparison
    text = summary_sentence(table, ["10/class", "1%", "10%"], "Fine-tuned (layer 1)")
    assert "10/class (71" not in text and text.endswith(
        "; no comparison at 10/class (a row missing or not trained)."
    )
