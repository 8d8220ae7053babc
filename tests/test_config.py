"""Config validation: defaults, overrides, and one-line errors that name the key."""

import pytest

from relssl.cli import build_parser
from relssl.cli.train import base_config_tree, train_overrides
from relssl.config import load_yaml, parse_value
from relssl.errors import ConfigError
from relssl.train.config import build_config


def test_defaults_are_the_papers():
    cfg = build_config()
    assert cfg.method == "relational"
    assert cfg.relational.k == 32 and cfg.relational.aggregation == "cat" and cfg.relational.gamma == 2.0
    assert cfg.train.batch_size == 64 and cfg.train.epochs == 200
    assert cfg.optim.name == "adam" and cfg.optim.lr == 1e-3
    assert (cfg.eval.epochs, cfg.eval.lr, cfg.eval.batch_size) == (100, 1e-3, 128)


def test_dotted_overrides_and_yaml_values():
    cfg = build_config({}, {"relational.k": parse_value("8"), "augment.scale": parse_value("[0.2, 1.0]"),
                            "eval.standardize": parse_value("true")})
    assert cfg.relational.k == 8
    assert cfg.augment.scale == (0.2, 1.0)
    assert cfg.eval.standardize is True


@pytest.mark.parametrize(
    "overrides,key",
    [
        ({"relational.aggregation": "product"}, "relational.aggregation"),
        ({"relational.k": 1}, "relational.k"),
        ({"optim.lr": -1}, "optim.lr"),
        ({"data.dataset": "mnist"}, "data.dataset"),
        ({"backbone.name": "vit"}, "backbone.name"),
        ({"method": "magic"}, "method"),
        ({"train.batchsize": 3}, "train.batchsize"),
        ({"data.dataset": "imagefolder"}, "data.root"),
    ],
)
def test_bad_values_fail_with_the_key_named(overrides, key):
    with pytest.raises(ConfigError) as info:
        build_config({}, overrides)
    assert f"'{key}'" in str(info.value) or key in str(info.value)


def test_named_options_map_to_keys():
    args = build_parser().parse_args(
        ["train", "--dataset", "cifar10", "--k", "4", "--batch-size", "32", "--epochs", "3", "--seed", "7",
         "--no-download", "--compare-random", "--set", "relational.gamma=0"]
    )
    overrides = train_overrides(args)
    cfg = build_config({}, overrides)
    assert cfg.data.dataset == "cifar10" and cfg.relational.k == 4 and cfg.train.batch_size == 32
    assert cfg.train.epochs == 3 and cfg.seed == 7 and cfg.data.download is False
    assert cfg.eval.compare_random is True and cfg.relational.gamma == 0.0


def test_bad_set_syntax():
    args = build_parser().parse_args(["train", "--set", "novalue"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        train_overrides(args)


def test_quick_preset_only_for_digits_without_config(tmp_path):
    assert base_config_tree(None, {})["relational"]["k"] == 4
    assert base_config_tree(None, {"data.dataset": "cifar10"}) == {}
    f = tmp_path / "c.yaml"
    f.write_text("relational:\n  k: 6\n")
    assert base_config_tree(str(f), {}) == {"relational": {"k": 6}}


def test_shipped_configs_validate():
    from pathlib import Path

    files = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))
    assert files, "configs/ holds no YAML files"
    for f in files:
        build_config(load_yaml(f))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")


def test_bare_on_and_off_are_words_not_booleans(tmp_path):
    """YAML reads on/off as true/false; train.channels_last and train.amp take them as the words they mean."""
    args = build_parser().parse_args(["train", "--set", "train.channels_last=on", "--set", "train.amp=off"])
    cfg = build_config({}, train_overrides(args))
    assert (cfg.train.channels_last, cfg.train.amp) == ("on", "off")
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  channels_last: off\n")
    assert build_config(load_yaml(f)).train.channels_last == "off"
