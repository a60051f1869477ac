"""TOML settings into typed, validated dataclasses, refusing anything it does not understand.

A service that starts half-configured is worse than one that refuses to start, so an unknown key,
a wrong type or a bad value raises ConfigError naming the key (`scoring.alert_lines`) and why.
Settings classes are plain frozen dataclasses whose fields have defaults; `build` walks their
type hints. A field may check its own value in `__post_init__` by raising ValueError, which is
reported against the section.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")


class ConfigError(ValueError):
    """A settings problem, naming the file and key where it is."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing file or a syntax error becomes a ConfigError."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def load_file(cls: type[T], path: str | Path) -> T:
    """`build(cls, load_toml(path))`, every ConfigError naming the file."""
    try:
        return build(cls, load_toml(path))
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(str(path)) else f"{path}: {text}") from exc


def build(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Make a `cls` from a TOML table, checking every key against the dataclass fields."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a table, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(sorted(fields))
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"{_join(where, key)}: unknown key ({hint}known keys: {known})")
        values[name] = _convert(hints[name], raw, _join(where, key))
    try:
        return cls(**values)
    except ValueError as exc:
        # the checks name their field first ("flag_z = 60.0 must be ..."): written as
        # section.key, as the key and type errors are
        message = str(exc)
        named = message.split(" ", 1)[0].rstrip(":") in fields
        raise ConfigError(
            _join(where, message) if named else f"{where or 'config'}: {message}"
        ) from exc


def _convert(hint: Any, raw: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, raw, where)
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, raw, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {_kind(raw)} fits none")
    if origin is typing.Literal:
        if raw not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: {raw!r} is not one of {allowed}")
        return raw
    if origin in (tuple, list):
        if not isinstance(raw, list):
            raise ConfigError(f"{where}: expected a list, got {_kind(raw)}")
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(raw)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a table, got {_kind(raw)}")
        value_hint = args[1] if len(args) == 2 else Any
        return {str(k): _convert(value_hint, v, _join(where, str(k))) for k, v in raw.items()}
    if hint is Any:
        return raw
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}: expected true or false, got {_kind(raw)}")
        return raw
    if hint is int:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ConfigError(f"{where}: expected an integer, got {_kind(raw)}")
        return raw
    if hint is float:
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            raise ConfigError(f"{where}: expected a number, got {_kind(raw)}")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{where}: expected a string, got {_kind(raw)}")
        return raw
    if hint is Path:
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{where}: expected a path string, got {_kind(raw)}")
        return Path(raw).expanduser()
    raise ConfigError(f"{where}: settings type {hint!r} is not supported")  # a code bug


def check_bounds(
    settings: object,
    above: Mapping[str, float] | None = None,
    at_least: Mapping[str, float] | None = None,
    at_most: Mapping[str, float] | None = None,
    ordered: tuple[tuple[str, str], ...] = (),
) -> None:
    """ValueError naming the first field of `settings` out of its bounds: > above[name],
    >= at_least[name], <= at_most[name], and field a <= field b for each (a, b) in `ordered`.
    For `__post_init__` checks (NaN fails every bound)."""
    for bounds, ok, word in (
        (above, lambda v, b: v > b, ">"),
        (at_least, lambda v, b: v >= b, ">="),
        (at_most, lambda v, b: v <= b, "<="),
    ):
        for name, bound in (bounds or {}).items():
            value = getattr(settings, name)
            if not ok(value, bound):
                raise ValueError(f"{name} = {value!r} must be {word} {bound}")
    for low, high in ordered:
        a, b = getattr(settings, low), getattr(settings, high)
        if not a <= b:
            raise ValueError(f"{low} = {a!r} must be <= {high} = {b!r}")


def in_folder(folder: Path, value: str) -> str:
    """A path from a config file, relative ones taken from the file's folder (not from wherever
    the program was started: a service starts in /). Empty and ~ paths stay as they are.
    Joined paths are resolved, so logs and replies name `/srv/models/x.skops`, not
    `/srv/config/../models/x.skops` (resolving follows symlinks, as opening the file would)."""
    if not value or value.startswith("~") or Path(value).is_absolute():
        return value
    return str((folder / value).resolve())


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def set_aside(path: Path) -> Path | None:
    """Rename an unreadable state file to `<name>.unreadable` (replacing an older one), so the
    fresh state written next does not destroy what a person may want to recover; the new name,
    or None when it is not a regular file (a folder named by mistake stays where it is, and
    writing the state there then fails, naming the key) or the rename fails."""
    aside = path.with_name(path.name + ".unreadable")
    try:
        if not path.is_file() or path.is_symlink():
            return None
        os.replace(path, aside)
    except OSError:
        return None
    return aside
