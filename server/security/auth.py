"""Bearer-token authentication of upstream services: a tokens file.

Every call carries `authorization: Bearer <token>`. The server keeps, per
caller, only the SHA-256 of its token, in a file (`--auth-tokens-file`):

    # caller          permissions   sha256 of the token
    checkout-api      ingest        sha256:5b3c...e1
    backfill-job      ingest        sha256:0f9a...77
    auditor           -             sha256:c2d4...09

One caller per line: a name (letters, digits, `.`, `_`, `-`, `@`; at most 64),
its permissions (comma-separated; `ingest` lets it send batches, `-` is none)
and the hex SHA-256 of its token. `python -m keystone_ingest.server.security.auth NAME`
makes a random token and prints it with its line.

Why a file of token hashes rather than HMAC-signed tokens: a caller is revoked
by deleting its line (signed tokens stay valid until they expire, unless a
deny list is kept beside them); the server holds no key that can mint tokens,
and a leaked file lets nobody in (the tokens are 256-bit random values, so
their hashes cannot be reversed); and no clocks need to agree. The cost is
distributing the file to every replica, which a secret store mount does.

Lookup hashes the presented token and looks the digest up in a dict: the time
taken does not depend on how much of a token matches, so it cannot be guessed
byte by byte. The file is checked for changes (mtime, size, inode) at every
call and read again when it changed; a file that no longer parses is refused
with an error in the log (line number, never a token) and the previous
contents stay in force.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import sys
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

PERMISSIONS = frozenset({"ingest"})
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")


class TokensFileError(ValueError):
    """The tokens file cannot be used; says where, never what a token is."""


@dataclass(frozen=True)
class Caller:
    name: str
    permissions: frozenset[str]

    def may(self, permission: str) -> bool:
        return permission in self.permissions


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(text: str, path: str = "tokens file") -> dict[str, Caller]:
    """digest -> Caller. Raises TokensFileError naming the line at fault."""
    by_digest: dict[str, Caller] = {}
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise TokensFileError(f"{path}:{number}: expected 'NAME PERMISSIONS sha256:HEX', got {len(parts)} fields")
        name, permissions, digest = parts
        if not _NAME.fullmatch(name):
            raise TokensFileError(f"{path}:{number}: caller name must be 1 to 64 of A-Z a-z 0-9 . _ - @")
        if name in names:
            raise TokensFileError(f"{path}:{number}: caller {name} appears twice")
        granted = frozenset() if permissions == "-" else frozenset(permissions.split(","))
        if unknown := granted - PERMISSIONS:
            raise TokensFileError(f"{path}:{number}: unknown permission {sorted(unknown)[0]!r} (known: ingest, or -)")
        match = _DIGEST.fullmatch(digest)
        if not match:
            raise TokensFileError(f"{path}:{number}: the third field must be sha256: and 64 hex digits")
        key = match.group(1).lower()
        if key in by_digest:
            raise TokensFileError(f"{path}:{number}: the same token hash as caller {by_digest[key].name}")
        names.add(name)
        by_digest[key] = Caller(name, granted)
    return by_digest


class TokensFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._bad_stamp: tuple | None = None
        self._callers: dict[str, Caller] = {}
        self.loads = 0
        self._reload(initial=True)

    def _reload(self, *, initial: bool = False) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp in (self._stamp, self._bad_stamp):
                return
            with open(self.path, encoding="utf-8") as f:
                callers = parse_tokens(f.read(), self.path)
        except (OSError, UnicodeDecodeError, TokensFileError) as exc:
            if isinstance(exc, TokensFileError):
                message = str(exc)
            else:
                message = f"{self.path}: {getattr(exc, 'strerror', None) or type(exc).__name__}"
            if initial:
                raise TokensFileError(f"--auth-tokens-file {message}") from None
            bad = stamp if not isinstance(exc, OSError) else ("unreadable", message)
            if bad != self._bad_stamp:  # logged once per change, not at every call
                self._bad_stamp = bad
                log.error(
                    "tokens file changed but cannot be used; the previous callers stay in force",
                    extra={"error": message},
                )
            return
        self._callers = callers
        self._stamp = stamp
        self._bad_stamp = None
        self.loads += 1
        if not initial:
            log.info("tokens file reloaded", extra={"callers": len(callers)})

    def caller(self, token: str) -> Caller | None:
        """The caller holding `token`, or None."""
        with self._lock:
            self._reload()
            callers = self._callers
        return callers.get(token_digest(token))

    def __len__(self) -> int:
        return len(self._callers)


def bearer_token(metadata) -> str | None:
    """The token of the first `authorization: Bearer ...` entry, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not _NAME.fullmatch(argv[0]):
        print(
            "usage: python -m keystone_ingest.server.security.auth CALLER_NAME"
            "   (prints a new token and its tokens-file line)",
            file=sys.stderr,
        )
        return 2
    token = secrets.token_urlsafe(32)
    print(f"token (give it to {argv[0]}, keep it secret): {token}")
    print(f"tokens-file line: {argv[0]} ingest sha256:{token_digest(token)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
