"""Scenario files: a fault plan in TOML, as the command line's options name and measure it.

Top-level ``seed`` and ``upstream-faults``; ``[faults]`` for every connection;
``[[phase]]`` tables with ``after`` (seconds since start); ``[[connection]]`` tables with
``number``, ``numbers`` or ``from``/``to`` (inclusive), and ``after``.  Every mistake is
one :class:`ValueError` naming the file.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .model import FaultPlan, Faults, Rule, parse_rate, parse_sequences

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["load_scenario"]

_FIELDS = {f.name for f in dataclasses.fields(Faults)}
_MS_FIELDS = {"latency", "jitter"}
_INT_FIELDS = {
    "split",
    "close_after",
    "reset_after",
    "stall_after",
    "corrupt_xor",
    "close_at_request",
}
_SET_FIELDS = {"duplicate_at", "reorder_at", "corrupt_at"}
_SEQUENCE_FIELDS = {"drop_sequences", "drop_resends", "corrupt_sequences"}
#: The command line's names of fields named otherwise.
_ALIASES = {"drop_resend_sequences": "drop_resends"}


def _overrides(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Turn a scenario table's options (CLI names and units) into Faults fields."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        name = _ALIASES.get(name, name)
        if name not in _FIELDS:
            raise ValueError(f"{where}: unknown fault {key!r}")
        if name in _MS_FIELDS:
            out[name] = float(value) / 1000.0
        elif name == "bandwidth":
            out[name] = parse_rate(value)
        elif name in _SEQUENCE_FIELDS:
            # A list of sequences and "A-B" ranges (inclusive), or one of them.
            try:
                out[name] = parse_sequences(value if isinstance(value, list) else [value])
            except ValueError as exc:
                raise ValueError(f"{where}: {key}: {exc}") from None
        elif name in _INT_FIELDS or name in _SET_FIELDS:
            items = value if name in _SET_FIELDS else [value]
            if not isinstance(items, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in items
            ):
                raise ValueError(f"{where}: {key} must be whole numbers, not {value!r}")
            out[name] = items if name in _SET_FIELDS else items[0]
        elif name in ("swallow_resends", "hang"):
            if not isinstance(value, bool):
                raise ValueError(f"{where}: {key} must be true or false, not {value!r}")
            out[name] = value
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: {key} must be a number, not {value!r}")
            out[name] = float(value)
    return out


def load_scenario(
    path: str | Path,
    faults: Faults | None = None,
    *,
    seed: int | None = None,
    upstream: bool = False,
) -> FaultPlan:
    """Return the plan of a scenario TOML file; ``faults``, ``seed``, ``upstream``: defaults.

    Top-level ``seed`` and ``upstream-faults``; ``[faults]`` for every connection;
    ``[[phase]]`` tables with ``after`` (seconds since start); ``[[connection]]``
    tables with ``number``, ``numbers`` or ``from``/``to`` (inclusive), and ``after``.
    Later tables win.  Options are named and measured as on the command line.
    """
    name = str(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: not valid TOML: {exc}") from None
    try:
        return _from_table(data, name, faults, seed, upstream)
    except (TypeError, AttributeError) as exc:
        # A value of the wrong shape deep in a table (a list for a number, a number
        # for a table): one line naming the file, as for every other mistake in it.
        raise ValueError(f"{name}: a value of the wrong type ({exc})") from None


def _from_table(
    data: dict[str, Any],
    name: str,
    faults: Faults | None,
    seed: int | None,
    upstream: bool,
) -> FaultPlan:
    unknown = set(data) - {"seed", "upstream-faults", "faults", "phase", "connection"}
    if unknown:
        raise ValueError(f"{name}: unknown key {sorted(unknown)[0]!r}")
    base = dataclasses.replace(
        faults or Faults(), **_overrides(data.get("faults", {}), f"{name} [faults]")
    )
    rules: list[Rule] = []
    for kind in ("phase", "connection"):
        for i, table in enumerate(data.get(kind, [])):
            rules.append(_rule(dict(table), kind, f"{name} [[{kind}]] #{i + 1}"))
    plan_seed = data.get("seed", seed) if seed is None else seed
    if plan_seed is not None and (not isinstance(plan_seed, int) or plan_seed < 0):
        raise ValueError(f"{name}: seed must be 0 or more, not {plan_seed!r}")
    up = data.get("upstream-faults", upstream)
    if not isinstance(up, bool):
        raise ValueError(f"{name}: upstream-faults must be true or false")
    plan = FaultPlan(base, seed=plan_seed, upstream=up, rules=tuple(rules))
    # Every set of faults a connection can get must be valid now, not at some
    # connection: each phase over the ones before it, and each connection rule (alone
    # and all together) over each of those.
    states = [base]
    for rule in rules:
        if rule.numbers is None and rule.first == 0 and rule.last is None:
            states.append(states[-1].replace(**rule.changes))
    for state in list(states):
        together = state
        for rule in rules:
            states.append(state.replace(**rule.changes))
            together = together.replace(**rule.changes)
        states.append(together)
    if up and any(state.packet_faults for state in states):
        raise ValueError(
            f"{name}: loss, duplicate, reorder, corrupt, drop-sequences, drop-resends and "
            "corrupt-sequences act on the server's packets: "
            "not with upstream-faults"
        )
    return plan


def _rule(table: dict[str, Any], kind: str, where: str) -> Rule:
    after = table.pop("after", 0.0)
    if isinstance(after, bool) or not isinstance(after, (int, float)) or after < 0:
        raise ValueError(f"{where}: after must be 0 seconds or more, not {after!r}")
    if kind == "phase":
        return Rule(_overrides(table, where), float(after))
    numbers: frozenset[int] | None = None
    if "number" in table:
        numbers = frozenset([table.pop("number")])
    elif "numbers" in table:
        numbers = frozenset(table.pop("numbers"))
    first, last = table.pop("from", 0), table.pop("to", None)
    for value in [*(numbers or ()), first, *([] if last is None else [last])]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}: connection numbers must be 0 or more, not {value!r}")
    return Rule(_overrides(table, where), float(after), numbers, first, last)
