"""Workflow configuration: validation against the JSON schemas with defaults filled in, and the
command-line options a rule passes to a stage.

The schemas live in ``workflow/schemas/``: ``config.schema.yaml`` (written by hand: the layout of
the config) refers to the sections of ``settings.schema.yaml``, which is generated from the
stages' settings classes (:mod:`pipeline.settings`). References (``$ref: file#/pointer``) are
inlined before validation, so defaults are filled through them too (Snakemake's own
``validate`` does not follow them). An unknown key or a wrong value is a :class:`PipelineError`
naming the key. :func:`validate_workflow_config` adds the checks across sections that the
workflow makes at start-up. This module reads YAML only: the Snakemake process never imports
PyTorch.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import jsonschema
import yaml

from pipeline.data.validate import check_intra_settings
from pipeline.errors import PipelineError

# the initial model's row of the comparison (`pipeline init-model`): one run shared by every seed
INITIAL = "initial"
# names the workflow writes at the top of <results>: no experiment may take them
RESERVED_NAMES = ("shared", "logs", "benchmarks", "demo-data", INITIAL)


def load_schema(schema_path: str | Path) -> dict:
    """The schema at ``schema_path`` with every ``$ref`` to a file beside it (and a JSON pointer
    into it) replaced by what it points to, merged with the keys written next to the ref."""
    schema_path = Path(schema_path)
    files: dict[Path, dict] = {}

    def read(path: Path) -> dict:
        if path not in files:
            files[path] = yaml.safe_load(path.read_text())
        return files[path]

    def inline(node, current: Path):
        if isinstance(node, list):
            return [inline(item, current) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            name, _, pointer = node["$ref"].partition("#")
            target_file = schema_path.parent / name if name else current
            target = read(target_file)
            for part in filter(None, pointer.split("/")):
                target = target[part]
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            return inline({**copy.deepcopy(target), **siblings}, target_file)
        return {key: inline(value, current) for key, value in node.items()}

    return inline(read(schema_path), schema_path)


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict, schema: str | Path | dict, source: str = "config") -> dict:
    """Return a copy of ``config`` with defaults filled in, or raise naming the bad key.

    ``schema`` is a path (loaded with :func:`load_schema`) or an already loaded schema.
    ``source`` names where the values came from (a file, or ``experiment calr``) in the message.
    """
    if not isinstance(schema, dict):
        schema = load_schema(schema)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    filled = copy.deepcopy(config) if config is not None else {}
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        if error.validator == "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            raise PipelineError(
                f"{source}: {error.message} at {where}; allowed keys there: {', '.join(allowed)}"
            )
        raise PipelineError(f"{source}: key {where}: {error.message}")
    return filled


def validate_workflow_config(
    config: dict, schema: str | Path | dict, source: str = "config"
) -> tuple[dict, dict[str, dict]]:
    """The workflow's whole config validated (:func:`validate_config`, defaults filled), and each
    experiment's ``inter`` section (the experiment's overrides merged into ``inter``, validated
    against that section's schema), by experiment name.

    Refused with a :class:`PipelineError`, before any job runs: an experiment named as one of
    the workflow's own folders or rows (:data:`RESERVED_NAMES`), a ``compare.baseline`` that is
    no row of the comparison (an experiment or :data:`INITIAL`), and, when an experiment
    refines, a ``dataset.min_images_per_camera`` that admits cameras stage 1 cannot split.
    """
    if not isinstance(schema, dict):
        schema = load_schema(schema)
    validated = validate_config(config, schema, source)
    experiments = {
        name: validate_config(
            deep_merge(validated["inter"], overrides),
            schema["properties"]["inter"],
            source=f"experiments.{name}",
        )
        for name, overrides in validated["experiments"].items()
    }
    reserved = sorted(set(experiments) & set(RESERVED_NAMES))
    if reserved:
        raise PipelineError(
            f"experiment name(s) {', '.join(reserved)} are the workflow's own folder or row "
            f"names ({', '.join(RESERVED_NAMES)}); rename the experiment(s)"
        )
    if any(settings["refine"]["mode"] != "none" for settings in experiments.values()):
        check_intra_settings(
            validated["dataset"]["min_images_per_camera"],
            validated["intra"]["clustering"]["ratio"],
        )
    baseline = validated["compare"]["baseline"]
    if baseline not in [*experiments, INITIAL]:
        raise PipelineError(
            f"compare.baseline {baseline!r} is none of the experiments "
            f"({', '.join(experiments)}) nor {INITIAL!r} (the untrained model); name the "
            "experiment the others are compared against"
        )
    return validated, experiments


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in, recursively for nested dicts."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def command_line(values: dict, section: dict, only: tuple[str, ...] | None = None) -> str:
    """The options that pass a config section's ``values`` to a stage, quoted for the shell.

    ``section`` is the section's schema (a generated settings schema: each property names its
    ``flag``); ``only`` restricts the keys passed. A key without a flag is the workflow's own
    (a workflow-only setting) and is left out. A boolean becomes ``--flag`` or ``--no-flag``,
    None is left out (the stage's default), floats keep their full precision. The options come
    in the schema's order, whatever the order of the keys in the config file, so that a rule's
    command (a Snakemake param) changes only when a value does.
    """
    properties = section["properties"]
    unknown = sorted(set(values) - set(properties))
    if unknown:
        raise KeyError(f"no setting(s) {', '.join(unknown)} in this section")
    words = []
    for name in (name for name in properties if name in values):
        value = values[name]
        flag = properties[name].get("flag")
        if (only is not None and name not in only) or value is None or flag is None:
            continue
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag.removeprefix("--"))
        else:
            words += [flag, shlex.quote(repr(value) if isinstance(value, float) else str(value))]
    return " ".join(words)
