"""The daemon's settings: the shipped config is exactly the defaults; bad keys are named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from spmwatch import protocol
from spmwatch.config import ConfigError, load_toml
from spmwatch.settings import (
    ControlSettings,
    CurveSettings,
    LinesSettings,
    PublishSettings,
    Settings,
    load_settings,
)
from tests.daemon_helpers import REPO

SHIPPED = REPO / "config" / "spmwatch.toml"


def _keys(value: object, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for f in dataclasses.fields(value):  # type: ignore[arg-type]
        inner = getattr(value, f.name)
        name = f"{prefix}{f.name}"
        out |= _keys(inner, f"{name}.") if dataclasses.is_dataclass(inner) else {name}
    return out


def _toml_keys(table: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in table.items():
        out |= _toml_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return out


def test_shipped_config_is_the_defaults() -> None:
    assert load_settings(SHIPPED) == Settings()


def test_shipped_config_lists_every_key() -> None:
    assert _toml_keys(load_toml(SHIPPED)) == _keys(Settings())


def test_every_key_is_commented() -> None:
    """Each key sits under a comment (directly, or in a group of keys sharing one comment)."""
    lines = SHIPPED.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" not in line or line.startswith("#"):
            continue
        j = i - 1
        while j >= 0 and "=" in lines[j] and not lines[j].startswith("#"):
            j -= 1
        assert j >= 0 and lines[j].startswith("#"), f"line {i + 1} has no comment: {line}"


@pytest.mark.parametrize(
    "text,named",
    [
        ("[publish]\nendpont = 'tcp://127.0.0.1:1'\n", "publish.endpont: unknown key"),
        ("[watch]\nsetle = 1\n", "watch.setle: unknown key (did you mean settle? known keys"),
        ("[publish]\nheartbeat_interval = 0\n", "publish.heartbeat_interval = 0.0 must be > 0"),
        ("[publish]\nendpoint = 'http://x'\n", "publish.endpoint = 'http://x' must start"),
        ("[logging]\nformat = 'xml'\n", "logging.format: 'xml' is not one of"),
        ("[metrics]\naddress = 'localhost'\n", "metrics.address = 'localhost'"),
        ("[scoring.alert]\nk = 'three'\n", "scoring.alert.k: expected an integer"),
        ("[curve]\nenabled = true\n", "curve.enabled = true needs"),
        ("[daemon]\nmax_open_scans = 0\n", "daemon.max_open_scans = 0 must be > 0"),
        ("[daemon]\nmax_held_mib = 0\n", "daemon.max_held_mib = 0 must be > 0"),
        ("[nonsense]\n", "nonsense: unknown key"),
        ("[scoring]\nflag_z = -3\n", "scoring.flag_z = -3.0 must be > 0"),
        ("[scoring]\nflag_z = 60\n", "scoring.flag_z = 60.0 must be <= z_clip = 50.0"),
        ("[scoring]\nmin_baseline = 40\n", "scoring.min_baseline = 40 must be <= window = 32"),
        ("[scoring]\ndropout_fraction = 1.5\n", "scoring.dropout_fraction = 1.5 must be <= 1"),
        ("[scoring]\nfloor_scar = 0\n", "scoring.floor_scar = 0.0 must be > 0"),
        ("[scoring]\nflag_z = nan\n", "scoring.flag_z = nan must be > 0"),
        ("[scoring.alert]\nk = 6\n", "scoring.alert.k = 6 must be <= m = 5"),
        ("[scoring.alert]\nslow_kinds = ['streaks']\n", "scoring.alert.slow_kinds[0]: 'streaks'"),
        (
            "[lines]\nendpoint = 'tcp://127.0.0.1:99999'\n",
            "lines.endpoint = 'tcp://127.0.0.1:99999'",
        ),
        ("[control]\nendpoint = 'tcp://127.0.0.1:0'\n", "the port must be 1-65535"),
        ("[model]\nwatch_threshold = 0.3\n", "model.watch_threshold = 0.3 must be >= 0.5"),
        ("[model]\nwatch_checks = 0\n", "model.watch_checks = 0 must be >= 1"),
        ("[scope]\nlines = 0\n", "scope.lines = 0 must be > 0"),
        ("[scope]\nchannels = []\n", "scope.channels = [] must be distinct names"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: ")
    assert named in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    "endpoint,local",
    [
        ("tcp://127.0.0.1:5560", True),
        ("tcp://127.5.6.7:1", True),
        ("tcp://localhost:5560", True),
        ("tcp://[::1]:5560", True),
        ("ipc:///run/spmwatch/pub", True),
        ("inproc://x", True),
        ("tcp://0.0.0.0:5560", False),
        ("tcp://*:5560", False),
        ("tcp://192.168.1.20:5560", False),
        ("tcp://eth0:5560", False),
        ("tcp://afm-pc.lab:5560", False),
    ],
)
def test_is_local(endpoint: str, local: bool) -> None:
    assert protocol.is_local(endpoint) is local


def test_sockets_beyond_the_machine_without_authentication_are_named() -> None:
    assert Settings().exposed() == []
    wide = Settings(
        publish=PublishSettings(endpoint="tcp://0.0.0.0:5560"),
        lines=LinesSettings(endpoint="tcp://*:5561"),
        control=ControlSettings(endpoint="tcp://192.168.1.2:5562"),
    )
    assert [key for key, _, _ in wide.exposed()] == [
        "publish.endpoint",
        "lines.endpoint",
        "control.endpoint",
    ]
    # CURVE covers the PUB socket, and a switched-off line socket listens nowhere
    curve = CurveSettings(enabled=True, server_secret_key="k", authorized_keys="d")
    covered = dataclasses.replace(wide, curve=curve, lines=LinesSettings(enabled=False))
    assert [key for key, _, _ in covered.exposed()] == ["control.endpoint"]


def test_relative_paths_are_taken_from_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service starts in /: `path = "mymodel.skops"` used to mean /mymodel.skops there."""
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "spmwatch.toml").write_text(
        '[model]\npath = "models/mine.skops"\n[watch]\nfolders = ["scans", "/abs", "../up"]\n'
        'state_file = "~/seen.json"\n'
    )
    monkeypatch.chdir(tmp_path)  # anywhere else
    s = load_settings(folder / "spmwatch.toml")
    assert s.model.path == str(folder / "models" / "mine.skops")
    # a path leaving the folder is named as the file it opens, not as etc/../up
    assert s.watch.folders == (folder / "scans", Path("/abs"), tmp_path.resolve() / "up")
    assert s.watch.state_file == "~/seen.json"  # ~ is the user's home, as written
    assert load_settings(REPO / "config" / "spmwatch.toml").model.path == ""  # shipped model
