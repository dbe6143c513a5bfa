"""Bearer tokens, for every server that asks for them: the gateway's API tokens
(gateway/core/access.py) and the registry server's (registry/access.py), each with a token
file format and rules of its own.

What is shared is how a secret is presented and found. A request presents
`Authorization: Bearer <secret>` (gRPC: metadata `authorization`). Tokens are kept as the
SHA-256 digests of their secrets, and a secret presented is digested and compared with
every token's digest with `hmac.compare_digest`, no early exit: digests have one length
whatever was presented, so the time tells neither which token matched, nor how much of
one, nor how long the real secrets are.

A token file is taken up again when it changes (modelgate/watched.py): a token added or
removed is in use from the first request at least a second after the file was written. A
file that does not load (half-edited, emptied, removed) leaves the previous tokens in use
and is logged once, by its loader's message, which names the line, never a secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from modelgate.watched import Watched


class Token(Protocol):
    """What a server's token type has for this module: the digest of its secret."""

    @property
    def digest(self) -> bytes: ...


T = TypeVar("T", bound=Token)


def bearer_secret(authorization: str | bytes | None) -> bytes | None:
    """The secret of an `Authorization` value `Bearer <secret>`; None when the value is
    missing, of another scheme, or has no secret."""
    if isinstance(authorization, str):
        authorization = authorization.encode("latin-1", "replace")
    scheme, _, secret = (authorization or b"").strip().partition(b" ")
    secret = secret.strip()
    if scheme.lower() != b"bearer" or not secret:
        return None
    return secret


def secret_digest(secret: str | bytes) -> bytes:
    """The digest a token is kept and compared as (a str secret is taken as UTF-8)."""
    if isinstance(secret, str):
        secret = secret.encode()
    return hashlib.sha256(secret).digest()


def find(tokens: Iterable[T], digest: bytes) -> T | None:
    """The token of `digest`, comparing it with every token's in constant time."""
    found = None
    # No early exit: every token is compared, so timing tells nothing of which matched.
    for token in tokens:
        if hmac.compare_digest(digest, token.digest):
            found = token
    return found


class TokenTable(Generic[T]):
    """A server's tokens, looked up by the secret a request presents."""

    def __init__(self, tokens: Iterable[T]) -> None:
        self._tokens = tuple(tokens)

    def tokens(self) -> tuple[T, ...]:
        """Every token, as they are now."""
        return self._tokens

    def find(self, secret: bytes) -> T | None:
        """The token whose secret is `secret`, None if none is (see the module's docstring)."""
        return find(self.tokens(), secret_digest(secret))


class TokenFile(TokenTable[T]):
    """The tokens of a token file, read again when the file changes (see the module's
    docstring). `load` reads the file: ValueError, one line naming the file and line and
    never a secret, for a file that cannot serve; the first load's goes to the caller."""

    def __init__(self, path: Path, load: Callable[[Path], tuple[T, ...]]) -> None:
        self.path = path
        self._file = Watched(
            (path,),
            lambda: load(path),
            taken_up=f"took up the changed token file {path}",
            keeping="still using the previous tokens",
        )
        super().__init__(self._file.value)

    def tokens(self) -> tuple[T, ...]:
        return self._file.current()
