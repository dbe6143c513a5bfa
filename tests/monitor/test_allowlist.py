"""The webhook allow-list: which URLs a registry-tagged webhook may point at."""

from __future__ import annotations

import pytest

from modelgate.monitor.allowlist import WebhookAllowList

ALLOWED = WebhookAllowList.parse("https://hooks.example.com/ci, http://127.0.0.1:9000")


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/ci",
        "https://hooks.example.com/ci/retrain?model=a",
        "https://HOOKS.example.com:443/ci/x",
        "http://127.0.0.1:9000/",
        "http://127.0.0.1:9000/anything",
    ],
)
def test_urls_on_or_below_an_entry_are_allowed(url: str) -> None:
    assert ALLOWED.allows(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com.evil.net/ci",  # a longer host, same text prefix
        "https://hooks.example.com/cinema",  # a longer path segment
        "https://hooks.example.com/other",
        "https://hooks.example.com/ci/../admin",
        "https://hooks.example.com/ci/%2e%2e/admin",
        "http://hooks.example.com/ci",  # another scheme
        "https://hooks.example.com:8443/ci",  # another port
        "https://user@hooks.example.com/ci",  # user information
        "http://127.0.0.1:9001/",
        "http://127.0.0.1/",
        "file:///etc/passwd",
        "not a url",
        "http://[::1/",
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    assert not ALLOWED.allows(url)


def test_an_empty_list_allows_nothing_and_bad_entries_are_refused() -> None:
    assert not WebhookAllowList.parse("").allows("https://hooks.example.com/ci")
    for entry in ("hooks.example.com", "ftp://x", "https://u@x", "https://x/?q=1"):
        with pytest.raises(ValueError, match="webhook allow-list entry"):
            WebhookAllowList.parse(entry)
