"""The validation search shared by fine-tuning and the supervised baseline (engine/tuning.py)."""

import json
from pathlib import Path
from typing import Any

from simclrv2.engine.tuning import candidate_key, candidates, choose_on_validation


def test_candidates_are_every_pair_epochs_major_and_default_to_the_stage_epochs() -> None:
    assert candidates([0.3, 1.0], [60, 200], 30) == [(0.3, 60), (1.0, 60), (0.3, 200), (1.0, 200)]
    assert candidates([1.0], [], 30) == [(1.0, 30)]


def test_choose_on_validation_picks_the_best_first_of_ties_and_resumes(tmp_path: Path) -> None:
    scores = {(0.3, 60): 50.0, (1.0, 60): 70.0, (0.3, 200): 70.0, (1.0, 200): 40.0}
    calls: list[tuple[float, int]] = []

    def train_once(run_dir: Path, mult: float, epochs: int) -> dict[str, Any]:
        calls.append((mult, epochs))
        assert run_dir == tmp_path / "grid" / candidate_key(mult, epochs)
        return {"test": {"top1": scores[(mult, epochs)]}, "peak_lr": mult * 0.1}

    grid = list(scores)
    best, record = choose_on_validation(tmp_path, grid, train_once, lambda _m: None, "t")
    assert best == (1.0, 60)  # tied with (0.3, 200) at 70: the first in grid order wins
    assert calls == grid and record[candidate_key(0.3, 200)]["validation_top1"] == 70.0
    assert json.loads((tmp_path / "grid.json").read_text()) == record
    # A rerun (e.g. after an interruption) reads the finished candidates instead of training them again.
    calls.clear()
    assert choose_on_validation(tmp_path, grid, train_once, lambda _m: None, "t")[0] == (1.0, 60)
    assert calls == []


def test_a_single_candidate_is_returned_without_training(tmp_path: Path) -> None:
    def never(*_args: Any) -> dict[str, Any]:
        raise AssertionError("nothing to choose: no validation run expected")

    assert choose_on_validation(tmp_path, [(2.0, 15)], never, lambda _m: None, "t") == ((2.0, 15), {})
    assert not (tmp_path / "grid.json").exists()


def test_a_search_whose_every_candidate_stays_near_chance_is_not_trained() -> None:
    from simclrv2.engine.tuning import near_chance, search_verdict

    assert near_chance(10.0, 10) and near_chance(19.0, 10) and not near_chance(19.5, 10)
    assert near_chance(53.0, 2) and not near_chance(56.0, 2)  # 2 classes: chance 50%, 5 points of margin
    record = {"a": {"validation_top1": 10.1}, "b": {"validation_top1": 11.8}, "c": {"validation_top1": 0.0}}
    verdict = search_verdict(record, 10)
    assert verdict["trained"] is False and "best 11.8%, chance 10.0%" in verdict["not_trained"]
    record["c"]["validation_top1"] = 35.0  # one candidate learned something: the stage counts
    assert search_verdict(record, 10) == {"trained": True}
    assert search_verdict({}, 10) == {"trained": True}  # no search: nothing to judge by
