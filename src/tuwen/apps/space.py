"""Config assignments for sweeps and ablations: parsing, applying and checking them.

``--grid PATH=V1,V2``, ``--param PATH=SPEC`` and ``--axis PATH=V1,V2`` all name a key of
the config by its dotted path. Every value (and both ends of a range) is applied to the
base config and validated before any trial starts, so a typo or a wrong type is one error
naming the option, not a failed trial an hour later.

Switching a typed section (``model.fusion.type=concat``) works as with ``--set``
(:mod:`tuwen.config.paths`): the keys the new type also has stay (``layers``, ``heads``), the
old type's others are dropped (``window`` belongs to cross-attention only): "everything else
identical" as far as the new type allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuwen.config import Config, apply_overrides, config_from_dict
from tuwen.config.paths import known_path, set_key
from tuwen.errors import ConfigError, TuwenError
from tuwen.tasks.table import TASKS

KINDS = ("log", "float", "int", "choice")


def parse_value(text: str) -> Any:
    """A command-line value as YAML (``1e-4`` is a float, ``null`` is None)."""
    value = yaml.safe_load(text) if text.strip() else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def split_assignment(option: str, text: str) -> tuple[str, str]:
    path, sep, rhs = text.partition("=")
    if not sep or not path.strip():
        raise ConfigError(f"{option} {text!r}: expected KEY.PATH=VALUES")
    return path.strip(), rhs


def parse_choices(option: str, text: str) -> tuple[str, list[Any]]:
    """``PATH=V1,V2`` -> (path, [v1, v2])."""
    path, rhs = split_assignment(option, text)
    values = [parse_value(v) for v in rhs.split(",") if v.strip()]
    if not values:
        raise ConfigError(f"{option} {text!r}: empty list of values for {path}")
    return path, values


@dataclass(frozen=True)
class Param:
    """One searched parameter: ``log:LOW:HIGH``, ``float:LOW:HIGH``, ``int:LOW:HIGH`` or
    ``choice:A,B,C``."""

    path: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def probe_values(self) -> list[Any]:
        """The values checked against the config before the search starts."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high))
        return trial.suggest_float(self.path, self.low, self.high, log=self.kind == "log")


def parse_param(text: str) -> Param:
    path, spec = split_assignment("--param", text)
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise ConfigError(f"--param {text!r}: unknown kind {kind!r} (expected "
                          f"{', '.join(KINDS)}, as in train.lr=log:1e-5:1e-2)")
    if kind == "choice":
        choices = tuple(parse_value(v) for v in rest.split(",") if v.strip())
        if not choices:
            raise ConfigError(f"--param {text!r}: empty choice list for {path}")
        return Param(path, kind, choices=choices)
    bounds = [parse_value(v) for v in rest.split(":")]
    if len(bounds) != 2 or not all(isinstance(b, (int, float)) and math.isfinite(b)
                                   for b in bounds):
        raise ConfigError(f"--param {text!r}: expected {kind}:LOW:HIGH with two numbers")
    low, high = bounds
    if not low < high or (kind == "log" and low <= 0):
        raise ConfigError(f"--param {text!r}: need LOW < HIGH" + (" and LOW > 0" if kind == "log"
                                                                    else ""))
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"--param {text!r}: int bounds must be whole numbers")
    return Param(path, kind, low=low, high=high)


# ------------------------------------------------------------------ applying to a config

def assign(raw: dict, path: str, value: Any, option: str = "--param") -> list[str]:
    """Set ``path`` to ``value`` in the raw config; returns the keys a type switch dropped."""
    return set_key(raw, path.split("."), value, f"{option} {path}={value}")


def overlay_values(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A partial config (a YAML overlay) as ``{dotted path: value}``, in an order that
    ``assign`` can replay: a section's ``type`` before its other keys (so switching a typed
    section's type drops the old type's keys first), lists and scalars whole."""
    out: dict[str, Any] = {}
    for key in sorted(tree, key=lambda k: k != "type"):
        value, path = tree[key], f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(overlay_values(value, path + "."))
        else:
            out[path] = value
    return out


def read_overlay(option: str, text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=FILE.yaml`` -> (name, the file's keys as dotted paths)."""
    name, _, file = text.partition("=")
    if not name.strip() or not file.strip():
        raise ConfigError(f"{option} {text!r}: expected NAME=FILE.yaml")
    path = Path(file.strip())
    if not path.is_file():
        raise ConfigError(f"{option} {name}: {path} not found")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"{option} {name}: {path} holds no config keys (expected a mapping)")
    return name.strip(), overlay_values(tree)


@dataclass
class BaseConfig:
    """The YAML config plus the ``--set`` overrides every trial shares."""

    path: str | None
    overrides: list[str]

    def raw(self) -> dict:
        raw: Any = {}
        if self.path is not None:
            file = Path(self.path)
            if not file.is_file():
                raise ConfigError(f"{file}: config file not found")
            raw = yaml.safe_load(file.read_text()) or {}
            if not isinstance(raw, dict):
                raise ConfigError(f"{file}: expected a mapping at the top level")
        return apply_overrides(raw, list(self.overrides))

    def with_values(self, values: dict[str, Any], option: str = "--param"
                    ) -> tuple[Config, list[str]]:
        """The validated config with ``values`` assigned, and the keys type switches dropped."""
        raw, dropped = self.raw(), []
        for path, value in values.items():
            dropped += assign(raw, path, value, option)
        try:
            return config_from_dict(raw, self.path or "defaults", tasks=TASKS), dropped
        except TuwenError as err:
            shown = ", ".join(f"{p}={v}" for p, v in values.items())
            raise ConfigError(f"{option} {shown}: {err}") from None

    def check(self, path: str, values: list[Any], option: str) -> None:
        """Every value of ``path`` gives a valid config, and ``path`` is a real key."""
        if not known_path(path.split(".")):
            raise ConfigError(f"{option} {path}: no such config key")
        for value in values:
            self.with_values({path: value}, option)

