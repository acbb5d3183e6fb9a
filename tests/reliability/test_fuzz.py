"""Property-based fuzzing (hypothesis) of the readers of user input: the config parser (YAML files and --set
overrides), subset files, index files and label specs. Any input either parses into a valid result or raises
the documented error (ConfigError / ValueError with a message), never anything else."""

from __future__ import annotations

import dataclasses
import string
import tempfile
from pathlib import Path

import pytest
import yaml
from faultkit import FUZZ, FaultLog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simclrv2.config import (
    ConfigError,
    DistillConfig,
    FinetuneConfig,
    PipelineConfig,
    PretrainConfig,
    load_config,
    parse_overrides,
)
from simclrv2.data.subsets import load_indices, parse_label_spec, read_subset_file

EXAMPLES = 150
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += _dotted_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


KEYS = sorted(set(_dotted_keys(PretrainConfig) + _dotted_keys(PipelineConfig)))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
RAW = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["[1", "{a: ", "!!python/object:os.system", "*x", "&a 1", "1e400", ".nan", "-.inf", "0x1F", "~"]
    ),
)
OVERRIDE = st.builds(
    lambda key, raw: f"{key}={raw}",
    st.one_of(st.sampled_from(KEYS), st.text(string.ascii_letters + "._", max_size=12)),
    RAW,
)


def _expect_config_or_error(cls: type, path: Path | None, overrides: list[str]) -> str:
    try:
        config = load_config(cls, path, overrides)
    except ConfigError as err:
        assert str(err), "a ConfigError without a message"
        return "error"
    assert isinstance(config, cls)
    return "parsed"


class _Counter:
    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}

    def add(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())


def test_fuzz_config_overrides(fault: FaultLog) -> None:
    counter = _Counter()

    @FAST
    @given(st.lists(OVERRIDE, max_size=4), st.sampled_from([PretrainConfig, FinetuneConfig, PipelineConfig]))
    def run(overrides: list[str], cls: type) -> None:
        counter.add(_expect_config_or_error(cls, None, overrides))

    run()
    assert counter.total >= EXAMPLES
    fault.record(
        FUZZ,
        f"random --set overrides (hypothesis; outcomes {counter.outcomes})",
        "holds: parsed, or ConfigError with a message; no other exception",
        counter.total,
    )


def test_fuzz_config_files(fault: FaultLog) -> None:
    counter = _Counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"

        @FAST
        @given(
            st.one_of(
                st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers()), VALUES),
                st.dictionaries(st.sampled_from(["pretrain", "finetune", "data", "optim"]), VALUES),
                VALUES,
            ),
            st.sampled_from([PretrainConfig, DistillConfig, PipelineConfig]),
        )
        def structured(document: object, cls: type) -> None:
            path.write_text(yaml.safe_dump(document))
            counter.add(_expect_config_or_error(cls, path, []))

        @FAST
        @given(st.one_of(st.text(max_size=80), st.binary(max_size=80)))
        def raw(text: str | bytes) -> None:
            if isinstance(text, bytes):
                path.write_bytes(text)
            else:
                path.write_text(text)
            counter.add(_expect_config_or_error(PretrainConfig, path, []))

        structured()
        raw()
    assert counter.total >= 2 * EXAMPLES
    fault.record(
        FUZZ,
        f"random YAML config files, structured and raw bytes (outcomes {counter.outcomes})",
        "holds: parsed, or ConfigError with a message; no other exception",
        counter.total,
    )


def test_parse_overrides_rejects_bad_yaml_with_a_config_error(fault: FaultLog) -> None:
    """Regression cases the fuzzer found: YAML that does not parse, or a tag that would build an object."""
    values = ("[1", "{a: ", "!!python/object/apply:os.system ['touch x']", "*undefined", "\x1b")
    for raw in values:
        with pytest.raises(ConfigError, match=r"override .epochs=.*not valid YAML"):
            parse_overrides([f"epochs={raw}"])
    fault.record(
        FUZZ,
        "--set values that are not YAML (unclosed [, tags, aliases, control characters)",
        "clear error (ConfigError naming the override)",
        len(values),
    )


NAMES = [f"n{i:02d}_{c}.JPEG" for i, c in enumerate("abcdefghij")]
LINES = st.one_of(
    st.sampled_from(NAMES),
    st.sampled_from(["../n00_a.JPEG", "/etc/passwd", "a/b", "..", "n00_a.JPEG/..", "C:\\x", "\x00", " "]),
    st.text(max_size=20),
)


def test_fuzz_subset_files(fault: FaultLog) -> None:
    counter = _Counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "subset.txt"

        @FAST
        @given(st.one_of(st.lists(LINES, max_size=8).map("\n".join), st.binary(max_size=60)))
        def run(content: str | bytes) -> None:
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_bytes(content.encode("utf-8", "surrogatepass"))
            try:
                idx = read_subset_file(path, NAMES)
            except ValueError as err:
                assert str(path) in str(err), err  # the message names the file
                counter.add("error")
                return
            chosen = [NAMES[i] for i in idx.tolist()]
            assert len(chosen) > 0 and all(n in NAMES for n in chosen)  # only the dataset's own files
            text = path.read_text()
            assert set(chosen) == {line.strip() for line in text.splitlines() if line.strip()}
            counter.add("parsed")

        run()
    assert counter.total >= EXAMPLES
    fault.record(
        FUZZ,
        f"random subset files, text and raw bytes (outcomes {counter.outcomes})",
        "holds: only the dataset's own files selected, or ValueError; nothing else",
        counter.total,
    )


def test_fuzz_index_files_and_label_specs(fault: FaultLog) -> None:
    counter = _Counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "indices.txt"

        @FAST
        @given(
            st.one_of(
                st.lists(st.one_of(st.integers(-5, 120), st.integers(-(2**80), 2**80)), max_size=6).map(
                    lambda v: "\n".join(map(str, v))
                ),
                st.text(max_size=30),
                st.binary(max_size=30),
            )
        )
        def indices(content: str | bytes) -> None:
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_bytes(content.encode("utf-8", "surrogatepass"))
            try:
                idx = load_indices(path, 100)
            except ValueError as err:
                assert str(path) in str(err), err  # the message names the file
                counter.add("error")
                return
            assert len(idx) > 0 and int(idx.min()) >= 0 and int(idx.max()) < 100
            counter.add("parsed")

        @FAST
        @given(st.one_of(st.text(max_size=12), st.from_regex(r"\s*\d{1,25}(\.\d{0,5})?\s*(%|/\s*class)\s*")))
        def specs(text: str) -> None:
            try:
                spec = parse_label_spec(text)
            except ValueError as err:
                assert str(err)
                counter.add("error")
                return
            assert (spec.fraction is not None and 0 < spec.fraction <= 1) or (spec.count_per_class or 0) >= 1
            counter.add("parsed")

        indices()
        specs()
    assert counter.total >= 2 * EXAMPLES
    fault.record(
        FUZZ,
        f"random index files and label specs (outcomes {counter.outcomes})",
        "holds: indices in range / fraction in (0, 1], or ValueError; nothing else",
        counter.total,
    )
