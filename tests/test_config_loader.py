"""The generic TOML settings loader: every wrong key or value is named in the error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from spmwatch.config import ConfigError, build, load_toml


@dataclass(frozen=True)
class Inner:
    n: int = 3
    mode: Literal["a", "b"] = "a"

    def __post_init__(self):
        if self.n < 0:
            raise ValueError(f"n = {self.n} must be >= 0")


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    folders: tuple[Path, ...] = ()
    policy: dict[str, list[str]] = field(default_factory=dict)
    x: float | None = None


def test_ok():
    o = build(
        Outer, {"inner": {"n": 5, "mode": "b"}, "folders": ["~/a"], "policy": {"k": ["s"]}, "x": 1}
    )
    assert o.inner.n == 5 and o.x == 1.0 and o.folders[0].name == "a"


@pytest.mark.parametrize(
    "data,msg",
    [
        ({"inner": {"nn": 1}}, "inner.nn: unknown key"),
        ({"inner": {"n": "1"}}, "inner.n: expected an integer"),
        ({"inner": {"mode": "c"}}, "inner.mode: 'c' is not one of"),
        ({"inner": {"n": -1}}, "inner.n = -1"),
        ({"policy": {"k": [1]}}, "policy.k[0]: expected a string"),
        ({"x": "s"}, "x: expected a number"),
    ],
)
def test_bad(data, msg):
    with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        build(Outer, data)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[inner\nn = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_toml(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_toml(tmp_path / "absent.toml")
