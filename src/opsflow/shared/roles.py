"""Caller roles and role sets."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """The role a bearer token carries. The seeds' roles map onto these."""

    OPERATOR = "operator"
    SUPERVISOR = "supervisor"
    AUDITOR = "auditor"
    COMPLIANCE = "compliance"
    ADMIN = "admin"
    SUPERADMIN = "superadmin"


ALL_ROLES: frozenset[Role] = frozenset(Role)


def roles(*names: Role) -> frozenset[Role]:
    """Return the set of roles allowed for an action.

    ``superadmin`` is never implied: every runbook names exactly who may act.
    """
    return frozenset(names)
