"""Workflow configuration: validation against the JSON schemas with defaults filled in.

The schemas live in ``workflow/schemas/`` and may refer to each other
(``$ref: train.schema.yaml``); defaults are filled through those references too (Snakemake's own
``validate`` does not follow them). Referenced files carry no ``$schema`` of their own: a
resource that declares one is validated by a fresh validator of that dialect, which would not
fill defaults. An unknown key or a wrong value is a :class:`PipelineError` naming the key.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import referencing
import referencing.jsonschema
import yaml

from pipeline.errors import PipelineError


def _registry(schema_dir: Path) -> referencing.Registry:
    def retrieve(uri: str) -> referencing.Resource:
        path = schema_dir / uri.rsplit("/", 1)[-1]
        return referencing.jsonschema.DRAFT202012.create_resource(yaml.safe_load(path.read_text()))

    return referencing.Registry(retrieve=retrieve)


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict, schema_path: str | Path, source: str = "config") -> dict:
    """Return a copy of ``config`` with defaults filled in, or raise naming the bad key.

    ``source`` names where the values came from (a file, or ``experiment calr``) in the message.
    """
    schema_path = Path(schema_path)
    schema = yaml.safe_load(schema_path.read_text())
    validator = _with_defaults(jsonschema.Draft202012Validator)(
        schema, registry=_registry(schema_path.parent)
    )
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


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in, recursively for nested dicts."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
