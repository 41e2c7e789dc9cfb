"""``data.source.family_rules``: a family per row from the file name and row range, for tables with
no family column (e.g. one file per fault, normal for its first rows). The reader adds the
column, so the rest of `metaad prepare` sees an ordinary family column.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

from metaad_dist.config import SourceConfig
from metaad_dist.data.raw_files import RawFile, compile_pattern
from metaad_dist.errors import ConfigError, DataError


@dataclass(frozen=True)
class FamilyRule:
    pattern: "re.Pattern[str]"
    family: str
    start: int
    stop: Optional[int]  # None: to the end of the file
    key: str


def family_rules(src: SourceConfig) -> list[FamilyRule]:
    """data.source.family_rules, checked: one-line ConfigErrors naming the rule's key."""
    rules = []
    for i, rule in enumerate(src.family_rules):
        key = f"data.source.family_rules[{i}]"
        pattern = compile_pattern(rule.match, f"{key}.match")
        if not str(rule.family).strip():
            raise ConfigError(f"{key}.family is empty; expected the family of the rows this rule covers")
        rows = list(rule.rows)
        if rows and not (len(rows) == 2 and 0 <= rows[0] < rows[1]):
            raise ConfigError(f"{key}.rows={rows}; expected [] (every row) or [start, stop) with 0 <= start < stop")
        try:
            _check_template(pattern, rule.family)
        except (re.error, IndexError) as exc:
            raise ConfigError(f"{key}.family={rule.family!r}: {exc} (groups of {key}.match={rule.match!r})") from None
        rules.append(FamilyRule(pattern, rule.family, rows[0] if rows else 0, rows[1] if rows else None, key))
    return rules


def _check_template(pattern: "re.Pattern[str]", template: str) -> None:
    """A group reference (\\N, \\g<N>, \\g<name>) that `pattern` lacks, as re.error, before any file is read."""
    for ref in re.finditer(r"\\(\d+)|\\g<(\w+)>", template):
        group = ref.group(1) or ref.group(2)
        known = int(group) <= pattern.groups if group.isdigit() else group in pattern.groupindex
        if not known:
            raise re.error(f"no group {group!r} in the pattern")


class RowFamilies:
    """The family of each row of one file under the rules whose `match` its name matches."""

    def __init__(self, raw: RawFile, rules: list[FamilyRule]):
        name = posixpath.basename(raw.uri)
        self.raw = raw
        self.rules = []
        for rule in rules:
            found = rule.pattern.search(name)
            if found is not None:
                self.rules.append((rule, found.expand(rule.family).strip()))

    def families(self, first: int, n: int) -> pa.Array:
        """Families of data rows first .. first + n - 1 (0-based within the file)."""
        rows = np.arange(first, first + n)
        out = np.full(n, None, dtype=object)
        for rule, family in self.rules:
            hit = (out == None) & (rows >= rule.start) & (rows < (rule.stop if rule.stop is not None else first + n))  # noqa: E711
            out[hit] = family
        if n and (out == None).any():  # noqa: E711
            row = int(rows[np.flatnonzero(out == None)[0]])  # noqa: E711
            covering = ", ".join(r.key for r, _ in self.rules) or "none"
            raise DataError(
                f"{self.raw.key}: {self.raw.uri}: data row {row} (0-based) is covered by no data.source.family_rules "
                f"entry (rules matching this file name: {covering})"
            )
        return pa.array(out.tolist(), pa.string())
