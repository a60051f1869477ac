"""`spmwatch keys`: write a CURVE key pair for a daemon, a responder or a subscriber."""

from __future__ import annotations

import argparse
import sys

from spmwatch.curve import CurveError, write_keypair


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="write a CURVE key pair (NAME.key public, NAME.key_secret private)",
        description="Write a CURVE key pair. Copy NAME.key to the other side's authorised-keys "
        "folder (clients) or give it to clients as the server key (servers).",
    )
    parser.add_argument("--out", required=True, help="folder to write the pair into")
    parser.add_argument("--name", default="spmwatch", help="base file name (default: spmwatch)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        files = write_keypair(args.out, args.name)
    except (CurveError, OSError) as exc:
        print(f"spmwatch keys: {exc}", file=sys.stderr)
        return 2
    print(f"public key: {files.public}")
    print(f"secret key: {files.secret} (mode 0600; keep it private)")
    return 0
