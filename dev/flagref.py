"""The flag reference, docs/configuration.md, rendered from the CLI's own parser.

    python -m keystone_ingest.dev.flagref docs/configuration.md          # write it
    python -m keystone_ingest.dev.flagref --check docs/configuration.md  # exit 1 if it is stale

`make docs` writes it; a test fails when the file and the parser disagree, so
a flag cannot be added, renamed or given a new default without the document.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from keystone_ingest.client.cli import ENV_PREFIX

HEADER = """\
# Configuration

Every flag of every `keystone-ingest` command, generated from the command
line parser by `make docs` (a test fails when this page and the parser
disagree). Each flag may also be set as the environment variable beside it;
a flag on the command line wins over the variable, which wins over the
default. `store_true` flags take 1/0, true/false, yes/no or on/off from the
environment. How the settings work together: docs/operations.md (memory,
backpressure, health), docs/bronze.md (the worker), docs/security.md (TLS,
tokens, Kafka authentication).
"""

# What add_argument_with_env appends to each help text; the table has a
# column for each, so they are taken off the meaning.
_SHOWN_DEFAULT = re.compile(r" \(default: (%\(default\)s|unset)\)")
_ENV_SUFFIX = re.compile(r" \[env " + ENV_PREFIX + r"\w+\]$")
_KIB = 1 << 10


def _default(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    value = action.default
    if action.required:
        return "required"
    if value is None:
        return "see meaning" if "(default" in _meaning(action) or "default:" in _meaning(action) else "unset"
    if isinstance(value, int) and "_bytes" in action.dest and value >= _KIB:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", _KIB)):
            if value % size == 0:
                return f"{value // size} {unit}"
    if value == "":
        return "''"
    return f"`{value}`" if isinstance(value, str) else f"{value:,}" if isinstance(value, int) else str(value)


def _meaning(action: argparse.Action) -> str:
    text = _ENV_SUFFIX.sub("", _SHOWN_DEFAULT.sub("", action.help or ""))
    if action.choices:
        text += f" (one of {', '.join(str(c) for c in action.choices)})"
    return text.replace("|", "\\|")


def _table(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for action in parser._actions:  # argparse has no public list of a parser's arguments
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        flag = max(action.option_strings, key=len)
        env = ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")
        rows.append(f"| `{flag}` | `{env}` | {_default(action)} | {_meaning(action)} |")
    return rows


def render() -> str:
    """The page, from a parser built with no KEYSTONE_* variable set (they
    would otherwise become the defaults shown)."""
    from keystone_ingest.server.cli import build_parser

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(ENV_PREFIX)}
    try:
        parser = build_parser()
    finally:
        os.environ.update(saved)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [HEADER]
    for name, sub in commands.choices.items():
        lines += [f"## keystone-ingest {name}", "", sub.description or "", "", *_table(sub), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keystone_ingest.dev.flagref", description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path, help="the page to write or check")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the parser")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        if not args.path.exists() or args.path.read_text() != page:
            print(f"{args.path} does not match the CLI's flags; run: make docs", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
