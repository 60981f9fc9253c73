"""Settings declared once: the generated schema is current, the generators agree with each other,
and every config key, set to a value other than its default, reaches the command of the rule
that uses it (`snakemake -n -p`)."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline import settings
from pipeline.config import command_line, load_schema, validate_config
from pipeline.errors import PipelineError
from pipeline.settings import setting
from tests.workflow_runs import snakemake

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")


@dataclass(frozen=True)
class Example:
    """An example section."""

    count: int = setting(3, "how many", minimum=1)
    ratio: float = setting(0.5, "a fraction", minimum=0, maximum=1)
    mode: str = setting("a", "which one", choices=("a", "b"))
    path: str | None = setting(None, "where", flag="--where")
    on: bool = setting(True, "switch")


def test_generated_schema_file_is_current():
    path = ROOT / settings.SCHEMA_FILE
    assert path.read_text() == settings.settings_schema_text(), (
        f"{path} is out of date: run `python -m pipeline.settings`"
    )


def test_flags_parse_back_into_the_settings_and_bounds_name_the_flag():
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, Example, "example")
    values = {"count": 5, "ratio": 0.25, "mode": "b", "path": "a b;c", "on": False}
    words = shlex.split(command_line(values, settings.schema(Example)))
    assert words == [
        "--count",
        "5",
        "--ratio",
        "0.25",
        "--mode",
        "b",
        "--where",
        "a b;c",
        "--no-on",
    ]
    assert settings.from_args(Example, parser.parse_args(words)) == Example(**values)
    assert settings.from_args(Example, parser.parse_args([])) == Example()
    bad = parser.parse_args(["--count", "0", "--ratio", "2", "--mode", "c"])
    with pytest.raises(PipelineError) as error:
        settings.from_args(Example, bad)
    assert str(error.value) == (
        "--count must be 1 or more, got 0; --ratio must lie in [0, 1], got 2.0; "
        "--mode must be one of a, b, got c"
    )


def test_schema_of_a_settings_class_validates_and_fills_defaults():
    section = settings.schema(Example)
    assert section["properties"]["path"]["flag"] == "--where"
    assert validate_config({"count": 7}, section) == {**Example().__dict__, "count": 7}
    with pytest.raises(PipelineError, match="key count: 0 is less than the minimum of 1"):
        validate_config({"count": 0}, section)
    with pytest.raises(KeyError, match="no setting"):
        command_line({"counts": 1}, section)


def test_a_workflow_only_setting_has_a_config_key_and_no_flag():
    """evaluate.every_round says which jobs run: the workflow reads it, `pipeline evaluate`
    neither takes nor receives it."""
    from pipeline.stages.evaluate import EvaluateOptions

    section = settings.schema(EvaluateOptions)
    assert section["properties"]["every_round"]["default"] is False
    assert "flag" not in section["properties"]["every_round"]
    assert command_line({"max_rank": 20, "every_round": True}, section) == "--max-rank 20"
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, EvaluateOptions)
    assert "--every-round" not in parser.format_help()
    assert settings.from_args(EvaluateOptions, parser.parse_args([])) == EvaluateOptions()


def other_value(schema: dict, default):
    """A valid value different from ``default`` for a leaf schema."""
    if "enum" in schema:
        return next(value for value in schema["enum"] if value not in (default, None))
    if "pattern" in schema:  # the device: a GPU, so that GPU jobs claim theirs
        return "cuda"
    kind = schema["type"][0] if isinstance(schema["type"], list) else schema["type"]
    if kind == "boolean":
        return not default
    if kind == "integer":
        value = (default or 0) + 3
        return min(value, schema["maximum"]) if "maximum" in schema else value
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0.0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 10))
        value = round(low + 0.37 * (high - low), 4)
        return value if value != default else round(low + 0.61 * (high - low), 4)
    return "x y"


def leaves(schema: dict, path=()):
    """(path, leaf schema) of every key that has a command-line flag."""
    for key, sub in schema.get("properties", {}).items():
        if "flag" in sub:
            yield (*path, key), sub
        elif sub.get("type") == "object":
            yield from leaves(sub, (*path, key))


# config section -> the rules whose commands carry its options
USED_BY = {
    ("seed",): {"init_model", "train_intra", "cluster_global", "refine", "train_inter", "report"},
    ("device",): {
        "init_model",
        "extract",
        "train_intra",
        "cluster_global",
        "train_inter",
        "evaluate",
    },
    ("deterministic",): {"extract", "train_intra", "train_inter", "evaluate"},
    ("dataset",): {"index"},
    ("demo",): {"demo_data"},
    ("model",): {"init_model"},
    ("input",): {"init_model", "extract", "train_intra", "train_inter"},
    ("extract",): {"extract"},
    ("intra", "clustering"): {"cluster_intra", "train_intra"},
    ("intra", "train"): {"train_intra"},
    ("inter", "knn"): {"cluster_global", "refine"},
    ("inter", "clusterer", "infomap"): {"cluster_global"},
    ("inter", "clusterer", "dbscan"): {"cluster_global"},
    ("inter", "clusterer", "association"): {"cluster_global"},
    ("inter", "refine"): {"refine"},
    ("inter", "css"): {"train_inter"},
    ("inter", "losses", "contrastive"): {"train_inter"},
    ("inter", "losses", "camera"): {"train_inter"},
    ("inter", "losses", "instance"): {"train_inter"},
    ("inter", "losses", "separation"): {"train_inter"},
    ("inter", "losses", "cacc"): {"train_inter"},
    ("inter", "losses", "icdl"): {"train_inter"},
    ("inter", "losses", "gid"): {"train_inter"},
    ("inter", "losses", "ical"): {"train_inter"},
    ("inter", "train"): {"train_inter"},
    ("evaluate",): {"evaluate"},
    ("report",): {"report"},
    ("compare",): {"compare"},
}
# the demo dataset (so that every job of the workflow exists; its root is the generated folder),
# random weights (nothing to download) and an experiment as the baseline; every other flagged
# key gets another value
FIXED = {
    ("dataset", "name"): "demo",
    ("dataset", "root"): None,
    ("model", "pretrained"): "none",
    ("compare", "baseline"): "b",  # one of the experiments
}
SEED = 3  # the non-default seed: it names the runs' folders


def nondefault_config() -> tuple[dict, dict]:
    """A config with every flagged key set to a value other than its default, and the flag and
    value each must show. Three experiments: ``a`` clusters with Infomap, refines, weights its
    clusters and trains the camera classifier; ``b`` clusters with DBSCAN, does not refine,
    trains the contrastive loss without weights and no camera classifier; ``c`` associates each
    camera's identities and trains neither (the other values of those switches: a term that is
    off passes only its switch)."""
    config, expected = {"results": "out"}, {}
    for path, leaf in leaves(SCHEMA):
        value = FIXED.get(path, other_value(leaf, leaf.get("default")))
        node = config
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        if path not in FIXED:
            expected[path] = (leaf["flag"], value)
    assert config["seed"] == SEED
    # the start-up check (pipeline/data/validate.py): a camera of the smallest admitted size
    # must split into two local clusters
    smallest = 2 * config["intra"]["clustering"]["ratio"]
    config["dataset"]["min_images_per_camera"] = smallest
    key = ("dataset", "min_images_per_camera")
    expected[key] = (expected[key][0], smallest)
    config["inter"].update(epochs=3, epochs_per_round=2)
    config["evaluate"]["every_round"] = True  # the workflow's: no flag, not among `expected`
    config["intra"]["epochs"] = 5
    config["experiments"] = {
        "a": {
            "clusterer": {"name": "infomap"},
            "losses": {
                "contrastive": {"enabled": True, "cluster_weights": True},
                "camera": {"enabled": True},
            },
        },
        "b": {
            "clusterer": {"name": "dbscan"},
            "refine": {"mode": "none"},
            "losses": {"contrastive": {"enabled": True}},
        },
        "c": {"clusterer": {"name": "association"}, "refine": {"mode": "none"}},
    }
    validate_config(config, SCHEMA)
    return config, expected


def lines_using(key_path: tuple, rule: str, commands: dict[str, list[str]]) -> list[str]:
    """The commands of ``rule`` that must carry the setting at ``key_path``."""
    lines = commands.get(rule, [])
    round0_of_a = f"--out out/a/seed{SEED}/round0/refined.csv"
    if key_path[:3] == ("inter", "clusterer", "infomap"):
        return [line for line in lines if "--method infomap" in line]
    if key_path[:3] == ("inter", "clusterer", "dbscan"):
        return [line for line in lines if "--method dbscan" in line]
    if key_path[:3] == ("inter", "clusterer", "association"):
        return [line for line in lines if "--method association" in line]
    if rule == "refine":  # b and c do not refine; a's later rounds draw with seed + round
        return [line for line in lines if round0_of_a in line]
    # the terms' switches: the contrastive loss is on in a and b, the camera loss in a only
    experiment = {
        ("inter", "losses", "contrastive", "enabled"): "/c/",
        ("inter", "losses", "contrastive", "cluster_weights"): "/b/",
        ("inter", "losses", "contrastive", "first_epoch"): "/b/",
        ("inter", "losses", "camera", "enabled"): "/b/",
    }.get(key_path)
    if experiment is not None:
        return [line for line in lines if experiment in line]
    if key_path[:3] == ("inter", "losses", "contrastive"):  # c switches the term off
        return [line for line in lines if "/c/" not in line]
    if key_path[:3] == ("inter", "losses", "camera"):  # on in a only
        return [line for line in lines if "/a/" in line]
    return lines


def planned_commands(output: str) -> dict[str, list[str]]:
    """rule -> the shell commands a `snakemake -n -p` plans for it."""
    commands: dict[str, list[str]] = {}
    rule = None
    for line in output.splitlines():
        stripped = line.strip().removeprefix("Shell command: ")
        if stripped.startswith(("rule ", "localrule ", "checkpoint ")):
            rule = stripped.split()[1].rstrip(":")
        elif rule and stripped.startswith("python -m pipeline"):
            commands.setdefault(rule, []).append(stripped)
    return commands


def shown(flag: str, value) -> str:
    if isinstance(value, bool):
        return flag if value else "--no-" + flag.removeprefix("--")
    return f"{flag} {shlex.quote(repr(value) if isinstance(value, float) else str(value))}"


@pytest.mark.slow
def test_every_setting_reaches_the_commands_of_the_rules_that_use_it(tmp_path):
    config, expected = nondefault_config()
    commands: dict[str, list[str]] = {}
    # a fresh run plans everything up to the dataset index (a checkpoint); a run that finds
    # the index plans everything after it
    for name, with_index in (("fresh", False), ("indexed", True)):
        workdir = tmp_path / name
        (workdir / "out" / "demo-data").mkdir(parents=True)
        if with_index:
            (workdir / "out" / "shared").mkdir()
            pd.DataFrame(
                {
                    "path": [f"/d/{i}.jpg" for i in range(4)],
                    "camid": [1, 2, 1, 2],
                    "pid": [0, 0, 1, 1],
                    "split": ["train", "train", "query", "gallery"],
                }
            ).to_csv(workdir / "out" / "shared" / "index.csv", index=False)
        else:
            (workdir / "out" / "demo-data").rmdir()
        path = workdir / "every.yaml"
        path.write_text(yaml.safe_dump(config))
        # on a machine with enough GPUs: Snakemake caps a job's request at the profile's gpu: 1
        result = snakemake(workdir, "--configfile", str(path), "--resources", "gpu=8", "-n", "-p")
        for rule, lines in planned_commands(result.stdout + result.stderr).items():
            commands.setdefault(rule, []).extend(lines)
    assert set(commands) >= set().union(*USED_BY.values()), sorted(commands)
    for key_path, (flag, value) in expected.items():
        section = next(s for s in USED_BY if key_path[: len(s)] == s)
        for rule in USED_BY[section]:
            lines = lines_using(key_path, rule, commands)
            assert lines and all(shown(flag, value) in line for line in lines), (
                f"{'.'.join(key_path)} = {value!r} is not in every {rule} command ({flag})"
            )
    # the workflow's own keys: epochs, rounds, experiments, results folder
    assert all("--epochs 5" in c for c in commands["train_intra"])
    assert {c.split("--epochs ")[1].split()[0] for c in commands["train_inter"]} == {"2", "1"}
    assert all("--total-epochs 3" in c for c in commands["train_inter"])
    assert any(f"out/b/seed{SEED}/round1/model.pt" in c for c in commands["train_inter"])
    assert all("--baseline b " in c for c in commands["compare"])
    # evaluate.every_round: each experiment's first round (of 2) is evaluated too, with the same
    # options, and reaches the report only
    evaluated = {c.split("--out ")[1].split()[0] for c in commands["evaluate"]}
    assert {f"out/{exp}/seed{SEED}/round0/model.metrics.csv" for exp in "abc"} < evaluated
    assert not any("every-round" in c for c in commands["evaluate"])
    assert all(
        f"--round-metrics out/{c.split('--experiment ')[1].split()[0]}/seed{SEED}/round0/" in c
        for c in commands["report"]
    )
    assert not any("round0" in c for c in commands["compare"])
    # the local labels go to the association clusterer and to the terms that need them (on
    # here in every experiment), and nowhere else
    local = f"--local-labels out/shared/seed{SEED}/intra/local_labels.csv"
    clustering = {
        c.split(" --method ")[1].split()[0]: local in c for c in commands["cluster_global"]
    }
    assert clustering == {"infomap": False, "dbscan": False, "association": True}
    assert all(local in c for c in commands["train_inter"])
    # jobs on the GPU claim as many as they ask for (pipeline/devices.py); the others none
    gpus = config["intra"]["train"]["gpus"], config["inter"]["train"]["gpus"]
    # (the initial model needs one to calibrate its BatchNorm statistics only)
    calibrating = int(config["model"]["calibrate_bn"])
    claims = {"extract": 1, "cluster_global": 1, "evaluate": 1, "init_model": calibrating}
    claims.update(train_intra=gpus[0], train_inter=gpus[1])
    for rule, lines in commands.items():
        claim = f"python -m pipeline.devices run --gpus {claims.get(rule)} -- " * (rule in claims)
        assert all(line.startswith(claim + "python -m pipeline ") for line in lines), rule
