"""Settings declared once: a frozen dataclass per group of a stage's options.

Every option a stage takes (beyond the paths of its inputs and outputs) is a field of a frozen
dataclass made with :func:`setting`, which holds its default, its meaning and its bounds. From
that one declaration come:

- the stage's command-line flags (:func:`add_arguments`) and the parsed values, checked against
  the bounds with errors naming the flag (:func:`from_args`);
- the workflow's config schema for that section, with a ``description``, a ``default`` and the
  command-line ``flag`` of every key (:func:`schema`). The schemas of all settings classes are
  written to ``workflow/schemas/settings.schema.yaml`` by ``python -m pipeline.settings`` (a
  test fails while that file is out of date), and ``config.schema.yaml`` refers to them, so
  that Snakemake reads plain YAML and never imports PyTorch;
- the option string a Snakemake rule passes to the stage, built from the config section and
  that schema by :func:`pipeline.config.command_line`.

So a new option is one field: it appears in the config (validated, documented), reaches the
rule's command and arrives in the stage, with no second place to edit.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
import re
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any

from pipeline.errors import PipelineError

_METADATA = "pipeline.setting"


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What a setting's value may be: numeric bounds, a list of choices, or None allowed."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    pattern: str | None = None

    def violation(self, value) -> str | None:
        """Why ``value`` is out of bounds, or None."""
        if value is None:
            return None if self.nullable else "must be given"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            return f"must match {self.pattern}"
        if self.minimum is not None and self.maximum is not None:
            inside = self.minimum <= value <= self.maximum
            return None if inside else f"must lie in [{self.minimum:g}, {self.maximum:g}]"
        low, high = self.exclusive_minimum, self.exclusive_maximum
        if low is not None and high is not None:
            return None if low < value < high else f"must lie strictly between {low:g} and {high:g}"
        rules = (
            (self.minimum, lambda v, b: v >= b, "{:g} or more"),
            (self.maximum, lambda v, b: v <= b, "{:g} or less"),
            (self.exclusive_minimum, lambda v, b: v > b, "greater than {:g}"),
            (self.exclusive_maximum, lambda v, b: v < b, "less than {:g}"),
        )
        for bound, ok, words in rules:
            if bound is not None and not ok(value, bound):
                return "must be " + words.format(bound)
        return None


def setting(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
    exclusive_maximum: float | None = None,
    choices: tuple | None = None,
    nullable: bool = False,
    pattern: str | None = None,
    flag: str | None = None,
    workflow_only: bool = False,
) -> Any:
    """A dataclass field that is a setting: its default, its meaning (the flag's help and the
    schema's description) and its bounds. ``flag`` overrides the command-line name
    (default: ``--<name with dashes>``). A ``workflow_only`` setting is read by the workflow,
    not by the stage (which jobs run): it has a config key and no command-line flag."""
    bounds = Bounds(
        minimum,
        maximum,
        exclusive_minimum,
        exclusive_maximum,
        choices,
        nullable or default is None,
        pattern,
    )
    return dataclasses.field(
        default=default,
        metadata={
            _METADATA: {
                "help": help,
                "bounds": bounds,
                "flag": flag,
                "workflow_only": workflow_only,
            }
        },
    )


@dataclasses.dataclass(frozen=True)
class Setting:
    """One field of a settings dataclass, as the generators below see it."""

    name: str
    type: type
    default: Any
    help: str
    bounds: Bounds
    flag: str
    workflow_only: bool = False

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


@cache
def settings_of(cls: type) -> tuple[Setting, ...]:
    """The settings of dataclass ``cls`` in declaration order (every field must be one)."""
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        meta = field.metadata.get(_METADATA)
        if meta is None:
            raise TypeError(f"{cls.__name__}.{field.name} is not declared with setting()")
        kind = hints[field.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        flag = meta["flag"] or "--" + field.name.replace("_", "-")
        out.append(
            Setting(
                field.name,
                kind,
                field.default,
                meta["help"],
                meta["bounds"],
                flag,
                meta["workflow_only"],
            )
        )
    return tuple(out)


# ---------------------------------------------------------------- command line
def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, title: str | None = None
) -> None:
    """One flag per setting of ``cls`` (in an argument group named ``title``, if given); none
    for a workflow-only setting."""
    group = parser.add_argument_group(title) if title else parser
    for item in settings_of(cls):
        if item.workflow_only:
            continue
        notes = [] if item.default is None else [f"default: {_word(item.default)}"]
        if item.bounds.choices is not None:  # checked by from_args, so errors name the flag
            notes.insert(0, "one of: " + ", ".join(map(str, item.bounds.choices)))
        kwargs: dict[str, Any] = {"dest": item.dest, "default": item.default}
        if item.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = item.type
        help_text = item.help + (f" ({'; '.join(notes)})" if notes else "")
        group.add_argument(item.flag, help=help_text, **kwargs)


def from_args(cls: type, args: argparse.Namespace):
    """The ``cls`` instance named by parsed arguments, each value checked against its bounds
    (an error names the flag)."""
    values = {item.name: getattr(args, item.dest, item.default) for item in settings_of(cls)}
    return build(cls, values, where=lambda item: item.flag)


def build(cls: type, values: Mapping[str, Any], where=None):
    """``cls(**values)`` with every value checked against its bounds; ``where(setting)`` names
    the value in an error (default: the field's name)."""
    problems = violations(cls, values, where)
    if problems:
        raise PipelineError("; ".join(problems))
    return cls(**values)


def violations(cls: type, values: Mapping[str, Any], where=None) -> list[str]:
    """One message per value of ``values`` outside its setting's bounds."""
    problems = []
    for item in settings_of(cls):
        if item.name in values:
            problem = item.bounds.violation(values[item.name])
            if problem:
                name = where(item) if where else item.name
                problems.append(f"{name} {problem}, got {_word(values[item.name])}")
    return problems


def flag_violations(instance) -> list[str]:
    """:func:`violations` of a settings instance, each named by its command-line flag."""
    values = {field.name: getattr(instance, field.name) for field in dataclasses.fields(instance)}
    return violations(type(instance), values, where=lambda item: item.flag)


def _word(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- config schema
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}
SCHEMA_FILE = "workflow/schemas/settings.schema.yaml"
SCHEMA_HEADER = (
    "# GENERATED from the settings dataclasses of the pipeline package (pipeline/settings.py):\n"
    "# do not edit. After changing a setting, run `python -m pipeline.settings` to rewrite it\n"
    "# (tests/test_settings.py fails while it is out of date).\n"
)


def schema(cls: type) -> dict:
    """The JSON schema of a config section holding the settings of ``cls``: every key with its
    type, default, description, bounds and command-line ``flag`` (none for a workflow-only
    setting); unknown keys are errors."""
    properties = {}
    for item in settings_of(cls):
        kind = _JSON_TYPES[item.type]
        entry: dict[str, Any] = {
            "type": [kind, "null"] if item.bounds.nullable else kind,
            "default": item.default,
            "description": item.help,
        }
        if not item.workflow_only:
            entry["flag"] = item.flag
        for key, bound in (
            ("minimum", item.bounds.minimum),
            ("maximum", item.bounds.maximum),
            ("exclusiveMinimum", item.bounds.exclusive_minimum),
            ("exclusiveMaximum", item.bounds.exclusive_maximum),
        ):
            if bound is not None:
                entry[key] = bound
        if item.bounds.pattern is not None:
            entry["pattern"] = f"^(?:{item.bounds.pattern})$"
        if item.bounds.choices is not None:
            entry["enum"] = list(item.bounds.choices) + ([None] if item.bounds.nullable else [])
        properties[item.name] = entry
    return {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": " ".join((cls.__doc__ or cls.__name__).split()),
        "properties": properties,
    }


def is_settings_class(value) -> bool:
    """Whether ``value`` is a dataclass whose every field was declared with :func:`setting`."""
    return (
        isinstance(value, type)
        and dataclasses.is_dataclass(value)
        and bool(dataclasses.fields(value))
        and all(_METADATA in field.metadata for field in dataclasses.fields(value))
    )


def all_settings_classes() -> dict[str, type]:
    """Every settings class of the pipeline package, by class name (names must be unique)."""
    import pipeline

    found: dict[str, type] = {}
    for module_info in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if is_settings_class(value) and value.__module__ == module.__name__:
                other = found.setdefault(value.__name__, value)
                if other is not value:
                    raise TypeError(
                        f"two settings classes are named {value.__name__}: in "
                        f"{other.__module__} and {value.__module__}; rename one"
                    )
    return dict(sorted(found.items()))


def settings_schema() -> dict:
    """The generated schema file's content: one ``$defs`` entry per settings class."""
    return {
        "description": "Config sections declared by the pipeline's settings classes",
        "$defs": {name: schema(cls) for name, cls in all_settings_classes().items()},
    }


def settings_schema_text() -> str:
    import yaml

    return SCHEMA_HEADER + yaml.safe_dump(settings_schema(), sort_keys=False, width=100)


def main() -> None:
    """Rewrite the generated schema file (run from the repository root)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / SCHEMA_FILE
    path.write_text(settings_schema_text())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
