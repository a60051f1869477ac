"""The `spmwatch` command: a thin dispatcher over one module per sub-command.

Each module in `COMMANDS` lives in this package and defines `add_parser(subparsers)`, which
registers its sub-command and sets `func` to a callable taking the parsed arguments and
returning the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import typing
from collections.abc import Callable

from spmwatch import __version__, protocol

COMMANDS: tuple[str, ...] = (
    "demo",
    "inspect",
    "keys",
    "replay",
    "run",
    "ctl",
    "train",
    "evaluate",
    "respond",
    "score",
    "subscribe",
    "proxy",
    "report",
)


def _endpoint_type(binds: bool) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            protocol.check_endpoint("endpoint", text, binds=binds)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return check


# argparse types: a ZeroMQ endpoint, refused (exit 2, naming it) when ZeroMQ would refuse or
# bend it, instead of a traceback from the socket
endpoint = _endpoint_type(binds=False)  # one to connect to
bind_endpoint = _endpoint_type(binds=True)  # one to listen on: port * takes any free one


def endpoint_in_config(path: str, section: str) -> str:
    """Where this machine reaches the socket `[section] endpoint` of the daemon config `path`
    binds (a wildcard host on loopback). ConfigError for a bad file or a port * (its number
    is chosen at bind time)."""
    return connect_to_bound(path, section, section_in_config(path, section).endpoint)


def section_in_config(path: str, section: str) -> typing.Any:
    """The settings of `[section]` of the daemon config `path`. Imports the settings only
    here: they pull in the scorer.

    A mistake elsewhere in the file is told on stderr, and the section is used all the same:
    a typo a SIGHUP just refused (the daemon keeps its running config) must not also cut
    `ctl`, `subscribe` and `replay` off from that daemon. A file with mistakes and no such
    section is refused: it is likely no daemon config at all (the responder's), and the
    built-in endpoint would reach whatever daemon listens there."""
    from spmwatch.config import ConfigError, build, load_toml
    from spmwatch.settings import Settings, load_settings

    try:
        return getattr(load_settings(path), section)
    except ConfigError as whole:
        try:
            tables = load_toml(path)
        except ConfigError:
            raise whole from None
        if section not in tables:
            raise ConfigError(
                f"{whole}; and it has no [{section}] section: is it the daemon's config? "
                "(another socket, such as the responder's actions_endpoint: --endpoint)"
            ) from None
        try:
            own = build(typing.get_type_hints(Settings)[section], tables[section], section)
        except ConfigError:
            raise whole from None
        print(f"spmwatch: {whole}; its [{section}] endpoint is used", file=sys.stderr)
        return own


def connect_to_bound(path: str, section: str, bound: str) -> str:
    """The address that reaches `bound`, the `[section] endpoint` of config `path`."""
    from spmwatch.config import ConfigError

    try:
        return protocol.connect_to(bound)
    except ValueError as exc:
        raise ConfigError(f"{path}: [{section}] endpoint {exc}") from None


def scan_id(text: str) -> str:
    """An argparse type: a scan id as the line socket takes it (not quietly renamed)."""
    try:
        return protocol.valid_scan_id(text)
    except protocol.ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def files_note(count: int, total: int, said: str) -> str:
    """A closing line of a command given files: "1 of 1 file unreadable"."""
    return f"{count} of {total} {'file' if total == 1 else 'files'} {said}"


def build_parser(commands: tuple[str, ...] = COMMANDS) -> argparse.ArgumentParser:
    """The parser with the sub-commands in `commands` (each module imported for it)."""
    parser = argparse.ArgumentParser(
        prog="spmwatch",
        description="Watch AFM scans line by line and raise an alert when the tip fails.",
    )
    parser.add_argument("--version", action="version", version=f"spmwatch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in commands:
        importlib.import_module(f"spmwatch.cli.{name.replace('-', '_')}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `spmwatch` command. Ctrl-C ends it with 130 and no traceback, also while a
    command's modules are still being imported (the first second of `replay` or `report`)."""
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        return 130


def _main(argv: list[str]) -> int:
    # only the module of the command asked for: importing them all pulled in scikit-learn and
    # made `spmwatch ctl pause` take 2 s to reach the daemon
    chosen = (argv[0],) if argv and argv[0] in COMMANDS else COMMANDS
    parser = build_parser(chosen)
    args, extra = parser.parse_known_args(argv)
    if extra:  # told with the command's own usage (`report A B` showed spmwatch's)
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
