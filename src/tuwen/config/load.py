"""YAML in, a validated ``Config`` out: ``--set`` overrides, one-line errors, saving.

``--set a.b.c=value`` overrides are applied to the raw YAML tree before validation, so they
go through exactly the same checks as the file. ``--set model.fusion.type=concat`` switches
the section's type (:mod:`tuwen.config.paths`); the keys it drops are reported as a
``TuwenWarning``, one line per ``--set``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tuwen import fsio
from tuwen.config.paths import dropped_note, set_key, split_loc
from tuwen.config.root import Config
from tuwen.errors import ConfigError, TuwenWarning


def packaged_config(name: str) -> Path:
    """A config shipped inside the package (``tuwen/configs/<name>.yaml``), e.g. ``shapes``:
    the demo's, found wherever tuwen is installed."""
    return Path(str(files("tuwen").joinpath("configs", f"{name}.yaml")))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.max_steps=200"`` -> (["train", "max_steps"], 200); the value is YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``--set``s to the raw tree in order; a type switch's dropped keys are warned."""
    for text in overrides:
        path, value = parse_override(text)
        dropped = set_key(raw, path, value, f"--set {text!r}")
        if dropped:
            warnings.warn(dropped_note(f"--set {text.strip()}", dropped, value), TuwenWarning,
                          stacklevel=2)
    return raw


def _error_line(e: dict) -> str:
    loc, tags = split_loc(e["loc"])
    got = e.get("input")
    if e["type"] == "type_choice":  # a typed union's `type` names no member
        key = e["ctx"]["key"]
        loc, got = [*loc, key], got.get(key) if isinstance(got, dict) else got
    path = ".".join(loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        key, tag = tags.get(len(loc) - 2, (None, None))  # the type of the key's own section
        return f"{path}: unknown key" + (f" for {key} {tag!r}" if tag else "")
    if e["type"] == "value_error" and (not loc or str(e["ctx"]["error"]).startswith(f"{path}.")):
        return str(e["ctx"]["error"])  # a validator's message that names its own keys
    expected = e["msg"]
    if "expected" in e.get("ctx", {}):
        expected = f"expected {e['ctx']['expected']}"
    return f"{path}: {expected} (got {got!r})"


def config_from_dict(raw: dict, source: str = "config", *,
                     tasks: Mapping[str, Any] | None = None) -> Config:
    """``raw`` validated; with ``tasks`` (the table of tasks, see config.tasks) task names
    and options are checked too."""
    try:
        return Config.model_validate(raw, context=None if tasks is None else {"tasks": tasks})
    except ValidationError as err:
        lines = [_error_line(e) for e in err.errors()]
        raise ConfigError(f"{source}: invalid config: " + "; ".join(lines)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None, *,
                tasks: Mapping[str, Any] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``--set``s;
    ``tasks`` as ``config_from_dict`` takes it."""
    raw: Any = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    return config_from_dict(apply_overrides(raw, overrides or []), source, tasks=tasks)


def save_config(config: Config, path: str | Path) -> None:
    fsio.write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
