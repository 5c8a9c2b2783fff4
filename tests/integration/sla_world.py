"""Rows of the operated app the triage and SLA integration tests act on."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg


@dataclass
class World:
    """One organisation with two departments, their staff and supervisors."""

    tag: str
    org: int
    dept: int
    dept_code: str
    other_dept: int
    staff: int
    outsider: int
    supervisor_emails: list[str] = field(default_factory=list)
    supervisor_phones: list[str] = field(default_factory=list)


def make_world(app_url: str, tag: str) -> World:
    """Insert an organisation, two departments, a staff member in each and two supervisors."""
    with psycopg.connect(app_url) as conn:
        org = _one(
            conn,
            "INSERT INTO organizations (slug, name) VALUES (%s, %s) RETURNING id",
            (f"org-{tag}", f"Org {tag}"),
        )
        code = f"RD{tag}".upper()
        dept = _one(
            conn,
            """INSERT INTO departments (organization_id, code, name, supervisor_email)
               VALUES (%s, %s, 'Roads', %s) RETURNING id""",
            (org, code, f"roads-{tag}@example.com"),
        )
        other = _one(
            conn,
            """INSERT INTO departments (organization_id, code, name)
               VALUES (%s, %s, 'Parks') RETURNING id""",
            (org, f"PK{tag}".upper()),
        )

        def user(name: str, dept_id: int, role: str, phone: str | None = None) -> int:
            return _one(
                conn,
                """INSERT INTO users (organization_id, department_id, username, email, full_name,
                                      phone, role)
                   VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                (org, dept_id, f"{name}-{tag}", f"{name}-{tag}@example.com", name, phone, role),
            )

        staff = user("staff", dept, "staff")
        outsider = user("parks", other, "staff")
        user("sup1", dept, "supervisor", "+15550001")
        user("sup2", dept, "supervisor", "+15550002")
        user("parksup", other, "supervisor", "+15550009")
    return World(
        tag=tag,
        org=org,
        dept=dept,
        dept_code=code,
        other_dept=other,
        staff=staff,
        outsider=outsider,
        supervisor_emails=sorted(
            [f"sup1-{tag}@example.com", f"sup2-{tag}@example.com", f"roads-{tag}@example.com"]
        ),
        supervisor_phones=["+15550001", "+15550002"],
    )


def make_request(
    app_url: str,
    world: World,
    *,
    status: str = "new",
    due: datetime | None = None,
    assigned: bool = False,
) -> int:
    """Insert a service request (optionally already assigned to the world's department)."""
    with psycopg.connect(app_url) as conn:
        rid = _one(
            conn,
            """INSERT INTO service_requests (organization_id, department_id, reference, title,
                   status, channel, sla_due_at, reporter_name, reporter_phone)
               VALUES (%s, %s, 'REQ-' || %s || '-' || nextval('service_requests_id_seq'),
                       'Pothole on Main St', %s, 'web', %s, 'Ann Reporter', '555-0100')
               RETURNING id""",
            (world.org, world.dept if assigned else None, world.tag, status, due),
        )
        if assigned:
            conn.execute(
                """INSERT INTO assignments (request_id, department_id, assignee_id, assigned_by)
                   VALUES (%s, %s, %s, 'itest')""",
                (rid, world.dept, world.staff),
            )
    return rid


def request_row(app_url: str, rid: int) -> dict[str, Any]:
    """The request's columns as a dict."""
    with psycopg.connect(app_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM service_requests WHERE id = %s", (rid,))
        row = cur.fetchone()
    assert row is not None
    return dict(row)


def timeline(app_url: str, rid: int) -> list[tuple[str, str, str]]:
    """(kind, actor, message) of the request's timeline, oldest first."""
    with psycopg.connect(app_url) as conn:
        rows = conn.execute(
            "SELECT kind, actor, message FROM request_timeline WHERE request_id = %s ORDER BY id",
            (rid,),
        ).fetchall()
    return [(r[0], r[1], r[2] or "") for r in rows]


def audit_rows(ops_url: str, target: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(action, actor, details) of audit events on a target, oldest first."""
    with psycopg.connect(ops_url) as conn:
        rows = conn.execute(
            "SELECT action, actor, details FROM audit_events WHERE target = %s ORDER BY id",
            (target,),
        ).fetchall()
    return [(r[0], r[1], dict(r[2])) for r in rows]


def wait_for(pred: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:.0f} s")
        time.sleep(0.2)


def _one(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])
