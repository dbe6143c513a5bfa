"""Which webhook URLs a registry writer may choose: the operator's allow-list.

A version's `retrain_webhook` tag is written by whoever may write to the registry, and the
events sent there are signed with the operator's secret and describe the model's data. So
a tagged URL is used only if it lies on the allow-list: an entry `scheme://host[:port][/path]`
admits URLs with the same scheme, host and port (compared as parsed, not as text, so
`https://hooks.example.com` does not admit `https://hooks.example.com.evil.net`) whose path
is the entry's path or below it. URLs with user information (`user@host`) or `.`/`..`
path segments are never admitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class _Entry:
    scheme: str
    host: str
    port: int
    path: str  # ends with "/"


def _parts(url: str) -> tuple[SplitResult, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        return None  # "/hooks/../admin" is not below "/hooks/" once the receiver resolves it
    return parts, port if port is not None else _DEFAULT_PORTS[parts.scheme]


class WebhookAllowList:
    """The URLs registry-tagged webhooks may point at (see the module's docstring)."""

    def __init__(self, entries: tuple[str, ...] = ()) -> None:
        parsed = []
        for entry in entries:
            found = _parts(entry)
            if found is None or found[0].query or found[0].fragment:
                raise ValueError(
                    f"webhook allow-list entry {entry!r} is not scheme://host[:port][/path] "
                    "(http or https, no user, query or fragment)"
                )
            parts, port = found
            path = parts.path if parts.path.endswith("/") else parts.path + "/"
            assert parts.hostname is not None
            parsed.append(_Entry(parts.scheme, parts.hostname.lower(), port, path))
        self._entries = tuple(parsed)

    @classmethod
    def parse(cls, text: str) -> WebhookAllowList:
        """From the setting: entries separated by commas or whitespace."""
        return cls(tuple(text.replace(",", " ").split()))

    def allows(self, url: str) -> bool:
        """Whether `url` lies on the allow-list."""
        found = _parts(url)
        if found is None:
            return False
        parts, port = found
        assert parts.hostname is not None
        host, path = parts.hostname.lower(), parts.path or "/"
        return any(
            (e.scheme, e.host, e.port) == (parts.scheme, host, port)
            and (path + "/").startswith(e.path)
            for e in self._entries
        )
