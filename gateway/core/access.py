"""Who may call what: API tokens from a file, compared in constant time, each for every
model or for some.

The front ends hand over what the caller presented (HTTP `Authorization: Bearer <token>`,
gRPC metadata `authorization`) before they read or decode a request, and the model it
names. A missing or unknown token is UNAUTHENTICATED (401), a known token for another model
PERMISSION_DENIED (403). Secrets appear in no message: a token is named by its name.

The token file has one token a line, `name:secret` (every model) or
`name:secret:model,model` (those models only); blank lines and `#` comments are ignored.
How secrets are presented, compared and the file taken up again when it changes is
modelgate/tokens.py, shared with the registry server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelgate.gateway.core.errors import ErrorCode, InferenceError
from modelgate.tokens import TokenTable, bearer_secret, find, secret_digest

# What the HTTP front end sends with a 401 (RFC 6750), so that clients know what to present.
CHALLENGE = 'Bearer realm="modelgate"'


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A token's name (for messages and logs), its secret's digest, and the models it may
    use (None: every model)."""

    name: str
    digest: bytes
    models: frozenset[str] | None

    def may_use(self, model: str | None) -> bool:
        """Whether this token may use `model`; None asks for every model (statistics of all,
        the repository index, metrics): only a token for every model may."""
        if self.models is None:
            return True
        return model is not None and model in self.models


def load_tokens(path: Path, setting: str = "auth_tokens_file") -> tuple[ApiToken, ...]:
    """The tokens of a token file; ValueError (one line naming the file and line) when it
    cannot be read or a line is not `name:secret[:models]`."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{setting} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    tokens: list[ApiToken] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.split(":")]
        models: frozenset[str] | None = None
        if len(parts) == 3:
            models = frozenset(m.strip() for m in parts[2].split(",") if m.strip())
        if len(parts) not in (2, 3) or not parts[0] or not parts[1] or models == frozenset():
            # The line may hold a secret: only its number goes into the message.
            raise ValueError(
                f"{setting} {path}, line {number}: expected name:secret or "
                "name:secret:model,model (secrets cannot contain ':')"
            )
        digest = secret_digest(parts[1])
        if find(tokens, digest) is not None:
            raise ValueError(f"{setting} {path}, line {number}: this secret is already listed")
        tokens.append(ApiToken(parts[0], digest, models))
    if not tokens:
        raise ValueError(f"{setting} {path}: no tokens in the file")
    return tuple(tokens)


class Access:
    """Checks what callers present against the tokens; one per process, both front ends."""

    def __init__(self, tokens: TokenTable[ApiToken]) -> None:
        self._tokens = tokens  # a `TokenFile` for `auth_tokens_file`: it follows the file

    def authenticate(self, authorization: str | bytes | None) -> ApiToken:
        """The token an `Authorization` value (`Bearer <secret>`) presents; UNAUTHENTICATED
        when there is none or it is not one of ours."""
        secret = bearer_secret(authorization)
        if secret is None:
            raise InferenceError(
                ErrorCode.UNAUTHENTICATED,
                "this server needs a token: send 'Authorization: Bearer <token>' "
                "(gRPC: metadata 'authorization')",
            )
        found = self._tokens.find(secret)
        if found is None:
            raise InferenceError(ErrorCode.UNAUTHENTICATED, "the token is not valid here")
        return found

    def check(self, authorization: str | bytes | None, model: str | None) -> ApiToken:
        """`authenticate`, then PERMISSION_DENIED unless the token may use `model` (None:
        every model, see `ApiToken.may_use`)."""
        token = self.authenticate(authorization)
        self.authorize(token, model)
        return token

    @staticmethod
    def authorize(token: ApiToken, model: str | None) -> None:
        """PERMISSION_DENIED unless `token` may use `model`."""
        if not token.may_use(model):
            what = f"model {model!r}" if model is not None else "every model"
            raise InferenceError(
                ErrorCode.PERMISSION_DENIED, f"token {token.name!r} is not allowed {what}"
            )
