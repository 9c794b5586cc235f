"""Presets with flag overrides, framework-free: flag > preset > dataclass default, and the parsed
arguments are only read, never changed.

A preset is one frozen dataclass holding a run's configs (nested dataclasses). A flag table maps each
flag (its argparse dest) to the dotted field path(s) it sets; `apply_flags` returns a new preset with
every flag the user set (value not None) written in through dataclasses.replace:

    FLAGS = {"steps": ("vae.train.steps", "diffusion.train.steps"), "vae_steps": "vae.train.steps"}
    configs = apply_flags(PRESETS[name], FLAGS, vars(args))

Table order is precedence: a later entry wins over an earlier one for the same field, so a general
flag (--steps) comes before the one that refines it (--vae-steps).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

T = TypeVar("T")
FlagTable = Mapping[str, str | tuple[str, ...]]


def set_field(config: T, path: str, value: Any) -> T:
    """A copy of a (nested, frozen) dataclass with the field at dotted `path` set to `value`."""
    head, _, rest = path.partition(".")
    if head not in {f.name for f in fields(config)}:  # type: ignore[arg-type]
        raise KeyError(f"{type(config).__name__} has no field {head!r} (flag table path {path!r})")
    new = set_field(getattr(config, head), rest, value) if rest else value
    return replace(config, **{head: new})  # type: ignore[type-var]


def apply_flags(preset: T, table: FlagTable, flags: Mapping[str, Any]) -> T:
    """The preset with every flag that was given (not None) written to its field(s), in table order."""
    out = preset
    for flag, paths in table.items():
        value = flags.get(flag)
        if value is None:
            continue
        for path in (paths,) if isinstance(paths, str) else paths:
            out = set_field(out, path, value)
    return out


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "",
                   absent: Mapping[str, Any] | None = None) -> list[str]:
    """Dotted names of the fields of `new` whose values differ in `old` (nested mappings compared
    field by field). A field `old` lacks counts as changed unless `absent` (nested like `new`) gives
    the value it had before it existed and `new` holds that value: settings saved before a field was
    added resume under the behaviour they were trained with."""
    absent = absent or {}
    names = []
    for key, value in new.items():
        before, was = old.get(key), absent.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = was if isinstance(was, Mapping) else None
            names += changed_fields(before, value, f"{prefix}{key}.", nested)
        elif key not in old and key in absent and not isinstance(was, Mapping):
            names += [] if was == value else [f"{prefix}{key}"]
        elif before != value:
            names.append(f"{prefix}{key}")
    return names
