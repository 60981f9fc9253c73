"""Config validation: defaults filled through schema references, bad keys named."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import command_line, deep_merge, validate_config, validate_workflow_config
from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
INTER_SCHEMA = ROOT / "workflow" / "schemas" / "inter.schema.yaml"


def test_empty_config_gets_every_default_including_referenced_schemas():
    config = validate_config({}, SCHEMA)
    assert config["model"]["arch"] == "resnet50"
    assert config["intra"]["train"]["lr"] == pytest.approx(3.5e-4)
    assert config["inter"]["train"]["momentum"] == pytest.approx(0.2)
    assert config["inter"]["refine"] == {
        "mode": "paper",
        "pivot_rule": "any",
        "schedule": "cosine",
        "p0": 1.0,
        "cosine_span": 1.0,
        "pivot_k": 15,
        "weight_floor": 0.0,
    }
    assert config["intra"]["train"]["memory_update"] == "sample"


@pytest.mark.parametrize(
    "config_file",
    ["config.yaml", *sorted(str(path.relative_to(ROOT)) for path in ROOT.glob("config/*.yaml"))],
)
def test_shipped_configs_and_their_experiments_validate(config_file):
    # the workflow's start-up checks: the config, every experiment's settings (its overrides
    # merged into `inter`), its name, the comparison's baseline a row of the table
    config, experiments = validate_workflow_config(
        yaml.safe_load((ROOT / config_file).read_text()), SCHEMA, config_file
    )
    assert list(experiments) == list(config["experiments"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"compare": {"baseline": "x"}}, r"compare.baseline 'x' is none of the experiments \(a\)"),
        ({"experiments": {"shared": {}}}, r"experiment name\(s\) shared are the workflow's own"),
        (
            {"dataset": {"min_images_per_camera": 3}, "intra": {"clustering": {"ratio": 2}}},
            r"min_images_per_camera 3 admits cameras that intra.clustering.ratio 2 cannot split",
        ),
    ],
)
def test_the_workflows_start_up_checks_name_what_to_change(change, message):
    config = deep_merge({"experiments": {"a": {}}, "compare": {"baseline": "a"}}, change)
    with pytest.raises(PipelineError, match=message):
        validate_workflow_config(config, SCHEMA)


def test_unknown_key_is_named_with_its_place_and_the_allowed_keys():
    with pytest.raises(PipelineError, match=r"'refien' was unexpected\) at inter; allowed keys"):
        validate_config({"inter": {"refien": {}}}, SCHEMA, "config.yaml")


def test_unknown_nested_key_in_a_referenced_schema_is_named():
    with pytest.raises(PipelineError, match=r"'lrr' was unexpected\) at intra.train"):
        validate_config({"intra": {"train": {"lrr": 1}}}, SCHEMA)


def test_bad_value_names_the_key():
    with pytest.raises(PipelineError, match=r"key model.arch: 'resnet51' is not one of"):
        validate_config({"model": {"arch": "resnet51"}}, SCHEMA)


def test_experiment_typo_is_caught_after_merging():
    base = validate_config({}, SCHEMA)["inter"]
    with pytest.raises(PipelineError, match=r"experiments.calr: .*'camera_los' was unexpected"):
        validate_config(deep_merge(base, {"camera_los": False}), INTER_SCHEMA, "experiments.calr")


def test_deep_merge_overrides_nested_keys_only():
    base = {"refine": {"mode": "paper", "p0": 1.0}, "beta": 1.0}
    merged = deep_merge(base, {"refine": {"mode": "none"}})
    assert merged == {"refine": {"mode": "none", "p0": 1.0}, "beta": 1.0}
    assert base["refine"]["mode"] == "paper"


def test_command_line_follows_the_schema_not_the_config_files_key_order():
    section = {
        "properties": {
            "seed": {"flag": "--seed"},
            "identities": {"flag": "--identities"},
            "flip": {"flag": "--flip"},
            "every_round": {},  # the workflow's own: no flag
        }
    }
    written = {"flip": False, "identities": 24, "seed": 1, "every_round": True}
    reordered = dict(reversed(list(written.items())))
    expected = "--seed 1 --identities 24 --no-flip"
    assert command_line(written, section) == command_line(reordered, section) == expected
