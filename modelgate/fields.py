"""Settings fields that describe themselves: help text, bounds and choices, declared once.

The settings dataclasses (`modelgate.gateway.settings`, and `DriftSettings` in
`modelgate.monitor.drift`, which may not import the gateway) declare each field with
`setting(...)`. Their `__post_init__` applies the declared rules with `check_fields`, the
`modelgate` command builds its flags from the same metadata, and `SettingValueError` names the
field whose value broke a rule, so that the entry point can say where the value came from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SettingRules:
    """What a setting means and which values it takes.

    `minimum`/`maximum` are inclusive bounds, `above` an exclusive lower one; `choices` the
    only values allowed; a `secret` setting never appears as a command-line flag (flags show
    in `ps`), only in the environment or the config file.
    """

    help: str
    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False

    def problem(self, value: Any) -> str | None:
        """Why `value` breaks these rules, or None when it keeps them."""
        if value is None:
            return None
        if self.choices and value not in self.choices:
            return f"expected one of {', '.join(self.choices)}; got {value!r}"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum:g}, got {value!r}"
        if self.above is not None and value <= self.above:
            return f"must be above {self.above:g}, got {value!r}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum:g}, got {value!r}"
        return None


def setting(
    default: T,
    help: str,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
    secret: bool = False,
) -> T:
    """A dataclass field carrying its `SettingRules` (read back with `rules_of`); a secret
    stays out of the dataclass's repr."""
    rules = SettingRules(help, minimum, above, maximum, choices, secret)
    field: T = dataclasses.field(default=default, repr=not secret, metadata={"setting": rules})
    return field


def rules_of(field: dataclasses.Field[Any]) -> SettingRules | None:
    """The rules `setting` declared on a field; None for a field that is not a setting."""
    rules = field.metadata.get("setting")
    return rules if isinstance(rules, SettingRules) else None


class SettingValueError(ValueError):
    """A setting's value breaks a rule; `setting` names it, `problem` says what is wrong."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


def check_fields(settings: Any) -> None:
    """Apply every field's declared rules to a settings dataclass; raise SettingValueError."""
    for field in dataclasses.fields(settings):
        rules = rules_of(field)
        if rules is None:
            continue
        problem = rules.problem(getattr(settings, field.name))
        if problem is not None:
            raise SettingValueError(field.name, problem)
