"""Who may read and change what in the registry server: bearer tokens and their scopes.

A token file has one token a line; blank lines and `#` comments are ignored:

    name:secret [scope ...]
    secret                      (a bare secret, named "token": admin, as before scopes)

Scopes, separated by spaces; a token without any is `admin`, so that token files written
before scopes keep working:

    admin              everything
    write[:PATTERN]    register and move versions of the models PATTERN matches, read them,
                       and upload artifacts
    read[:PATTERN]     read the models PATTERN matches (only when reads need a token)

PATTERN is a model name, a name prefix ending in `*` (`fraud-*`), or `*` (every model, the
default). Secrets are kept as digests and compared in constant time, all of them on every
request (modelgate/tokens.py, shared with the gateway; the server also takes a changed
token file up from there), and appear in no log line, error or audit record: a caller is
known by its token's name.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modelgate.registry.types import is_model_name
from modelgate.tokens import TokenTable, bearer_secret, find, secret_digest

_REALM = b'Bearer realm="modelgate-registry"'


class AccessError(Exception):
    """401 (no token) or 403 (wrong token, or a token without the scope) with the
    `WWW-Authenticate` value that says which."""

    def __init__(self, status: int, message: str, challenge: bytes = _REALM) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.challenge = challenge


class Action(enum.Enum):
    """What a scope allows, each including the ones below it."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


_RANK = {Action.READ: 0, Action.WRITE: 1, Action.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class Scope:
    """One scope of a token: an action on the models a pattern matches."""

    action: Action
    pattern: str = "*"

    def allows(self, action: Action, model: str | None) -> bool:
        """Whether this scope allows `action` on `model` (None: no model in particular)."""
        if _RANK[self.action] < _RANK[action]:
            return False
        if self.action is Action.ADMIN or self.pattern == "*" or model is None:
            return True
        if self.pattern.endswith("*"):
            return model.startswith(self.pattern[:-1])
        return model == self.pattern

    @classmethod
    def parse(cls, text: str) -> Scope:
        """`admin`, `read[:PATTERN]` or `write[:PATTERN]`; ValueError otherwise."""
        word, sep, pattern = text.partition(":")
        try:
            action = Action(word)
        except ValueError:
            raise ValueError(
                f"unknown scope {text!r} (admin, read[:PATTERN] or write[:PATTERN])"
            ) from None
        if not sep:
            return cls(action)
        if action is Action.ADMIN:
            raise ValueError("admin takes no pattern: it allows everything")
        stem = pattern[:-1] if pattern.endswith("*") else pattern
        if stem and not is_model_name(stem):
            raise ValueError(
                f"scope {text!r}: a pattern is a model name, a name prefix ending in '*', or '*'"
            )
        return cls(action, pattern)


ADMIN = (Scope(Action.ADMIN),)


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A bearer token: its name (for the audit trail), its secret's digest and its scopes."""

    name: str
    digest: bytes
    scopes: tuple[Scope, ...] = ADMIN

    def allows(self, action: Action, model: str | None = None) -> bool:
        """Whether any scope of this token allows `action` on `model`."""
        return any(scope.allows(action, model) for scope in self.scopes)


def load_tokens(path: Path) -> tuple[ApiToken, ...]:
    """The tokens of a token file (see the module's docstring); ValueError naming the line
    of a mistake (never showing a secret)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    tokens: list[ApiToken] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        name, sep, rest = line.partition(":")
        if not sep:
            if len(line.split()) > 1:
                raise ValueError(f"{where}: scopes need a named token: 'name:secret scope ...'")
            name, rest = "token", line
        name, fields = name.strip(), rest.split()
        if not name or not fields or len(name.split()) != 1:
            raise ValueError(f"{where}: expected 'name:secret [scope ...]' or a bare secret")
        secret, words = fields[0], fields[1:]
        try:
            scopes = tuple(Scope.parse(word) for word in words) or ADMIN
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        digest = secret_digest(secret)
        if find(tokens, digest) is not None:
            raise ValueError(f"{where}: this secret is already listed")
        tokens.append(ApiToken(name, digest, scopes))
    if not tokens:
        raise ValueError(f"{path}: no tokens in the file")
    return tuple(tokens)


class Access:
    """Checks a request's bearer token and its scopes: `caller`, then `require`.

    `tokens`: a `TokenFile` follows its file; none (empty): the registry is read-only.
    """

    def __init__(
        self, tokens: TokenTable[ApiToken] | Sequence[ApiToken], *, protect_reads: bool
    ) -> None:
        if not isinstance(tokens, TokenTable):
            tokens = TokenTable(tokens)
        if protect_reads and not tokens.tokens():
            raise ValueError("protecting reads needs tokens (--token-file)")
        self._tokens = tokens if tokens.tokens() else None
        self._protect_reads = protect_reads

    def caller(self, authorization: bytes | None, *, write: bool) -> ApiToken | None:
        """The caller's token; None for an anonymous read where reads are open.

        AccessError: 403 for a write to a registry without tokens (read-only), 401 without
        a bearer token where one is needed, 403 for a token that is not listed.
        """
        if write and self._tokens is None:
            raise AccessError(403, "this registry is read-only: start it with --token-file")
        if not write and not self._protect_reads:
            return None
        secret = bearer_secret(authorization)
        if secret is None:
            what = "writes" if write else "reads"
            raise AccessError(
                401, f"this registry needs a bearer token for {what} (Authorization: Bearer ...)"
            )
        found = self._tokens.find(secret) if self._tokens is not None else None
        if found is None:
            raise AccessError(
                403,
                "the bearer token is not valid for this registry",
                _REALM + b', error="invalid_token"',
            )
        return found

    @staticmethod
    def require(caller: ApiToken | None, action: Action, model: str | None = None) -> None:
        """AccessError 403 unless `caller` (None: an open read) may do `action` on `model`."""
        if caller is None or caller.allows(action, model):
            return
        what = f"{action.value} model {model!r}" if model is not None else action.value
        raise AccessError(
            403,
            f"token {caller.name!r} may not {what}: ask for a token with that scope",
            _REALM + b', error="insufficient_scope"',
        )

    @staticmethod
    def readable(caller: ApiToken | None, model: str) -> bool:
        """Whether `caller` (None: an open read) may read `model`: listings show only those."""
        return caller is None or caller.allows(Action.READ, model)
