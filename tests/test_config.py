from pathlib import Path

import pytest
import yaml

from simclrv2.config import ConfigError, PretrainConfig, load_config, parse_overrides, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    config = load_config(PretrainConfig, path)
    assert config.epochs > 0


def test_imagenet_config_has_the_papers_settings() -> None:
    c = load_config(PretrainConfig, CONFIGS / "imagenet.yaml")
    assert (c.batch_size, c.epochs, c.temperature) == (4096, 800, 0.1)
    assert (c.optim.base_lr, c.optim.lr_scaling, c.optim.weight_decay) == (0.1, "sqrt", 1e-4)
    assert c.optim.warmup_epochs == 0.05 * c.epochs
    assert c.model.head_layers == 3 and c.augment.blur and c.augment.color_strength == 1.0


def test_overrides_are_parsed_as_yaml_scalars_and_nested() -> None:
    assert parse_overrides(["epochs=5", "optim.base_lr=0.3", "data.name=cifar10", "max_steps=null"]) == {
        "epochs": 5,
        "optim": {"base_lr": 0.3},
        "data": {"name": "cifar10"},
        "max_steps": None,
    }
    assert load_config(PretrainConfig, None, ["optim.weight_decay=1e-6"]).optim.weight_decay == 1e-6
    c = load_config(PretrainConfig, None, ["epochs=5", "optim.base_lr=1"])
    assert c.epochs == 5 and c.optim.base_lr == 1.0 and isinstance(c.optim.base_lr, float)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epoch=3", "unknown config key epoch"),
        ("optim.lr=3", "unknown config key optim.lr"),
        ("epochs=three", "epochs: expected float"),
        ("batch_size=2.5", "batch_size: expected int"),
        ("epochs=0", "epochs must be > 0"),
        ("channels_last=1", "channels_last: expected bool"),
        ("optim.base_lr=-0.1", "optim.base_lr must be > 0"),
        ("temperature=0", "temperature must be > 0"),
        ("batch_size=0", "batch_size must be > 0"),
        ("batch_size=1", "batch_size must be >= 2"),
        ("precision=fp16", "precision: 'fp16' is not one of"),
        ("data.name=mnist", "data.name: 'mnist' is not one of"),
        ("model.backbone=r51_1x_sk0", "model.backbone"),
        ("optim.momentum=1.0", "optim.momentum must be in"),
        ("augment.crop_min_scale=0", "augment.crop_min_scale must be in"),
        ("optim", "must look like key=value"),
        ("data=3", "data: expected a mapping"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(PretrainConfig, None, [override])


def test_yaml_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PretrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(PretrainConfig, bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("optim:\n  base_lr: 0.1\n  wieght_decay: 0.0\n")
    with pytest.raises(ConfigError, match=r"unknown config key optim\.wieght_decay"):
        load_config(PretrainConfig, typo)


def test_saved_config_round_trips(tmp_path: Path) -> None:
    c = load_config(PretrainConfig, CONFIGS / "cifar10.yaml", ["seed=7"])
    save_config(c, tmp_path / "config.yaml")
    assert load_config(PretrainConfig, tmp_path / "config.yaml") == c
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == 7


def test_a_partial_section_keeps_the_stages_own_defaults() -> None:
    from simclrv2.config import FinetuneConfig

    c = load_config(FinetuneConfig, None, ["pretrained=x.pt", "optim.base_lr=0.02"])
    # Fine-tuning's optimiser defaults (SPEC 4: no weight decay, no warmup) survive a partial override.
    assert (c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs) == (0.02, 0.0, 0.0)
