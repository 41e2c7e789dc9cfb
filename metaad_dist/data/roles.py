"""Family roles of one experiment (docs/method.md section 1) and their validation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from metaad_dist.config import DataConfig
from metaad_dist.errors import ConfigError

ROLE_NAMES = ("normal", "meta", "validation", "held_out")
REQUIRED_ROLES = ("normal", "meta", "held_out")


@dataclass(frozen=True)
class FamilyRoles:
    normal: tuple[str, ...]
    meta: tuple[str, ...]
    validation: tuple[str, ...]
    held_out: tuple[str, ...]

    @property
    def trainable(self) -> tuple[str, ...]:
        """Families training and tuning code may read: never the held-out ones."""
        return self.normal + self.meta + self.validation

    @classmethod
    def from_config(cls, data: DataConfig, available: Sequence[str], required=REQUIRED_ROLES) -> "FamilyRoles":
        roles = {name: tuple(str(f) for f in getattr(data, name)) for name in ROLE_NAMES}
        known = set(available)
        for name in required:
            if not roles[name]:
                raise ConfigError(f"data.{name} is empty; expected at least one family name")
        seen: dict[str, str] = {}
        for name, families in roles.items():
            for family in families:
                if family not in known:
                    raise ConfigError(
                        f"data.{name}: unknown family '{family}'; dataset '{data.name}' has "
                        f"{sorted(known)}"
                    )
                if family in seen:
                    role = "the same role twice" if seen[family] == name else f"data.{seen[family]}"
                    raise ConfigError(f"data.{name}: family '{family}' is also in {role}; roles must not overlap")
                seen[family] = name
        return cls(**roles)
