"""``opsflow seed``: fill the app database with realistic fake data, fast (COPY).

What it writes, for ``requests`` service requests and ``tenants`` organizations:

- organizations: about one in five on a dedicated database, the rest on the shared one;
- departments: 4 to 8 per tenant, each with a supervisor mailbox;
- users: one per 100 requests (at least 8 per tenant): staff, inspectors, supervisors,
  technicians, viewers, at least one admin per tenant and a few developers; most active;
- sessions: about two per user, some expired or revoked;
- service_requests: mostly closed or resolved over the past year; the open ones (new,
  triaged, assigned, in_progress, waiting_external) were created in the last two weeks and have
  ``sla_due_at`` between 3 days ago and 7 days ahead, so SLA runbooks find both breached and
  upcoming requests; reporter names, e-mails (reserved ``example.*`` domains), phones
  (fictional 555 numbers) and street addresses come from small built-in word lists;
- assignments (every request past triage), request_timeline (a "created" entry per request,
  an "assigned" entry per assignment), attachments (about 15 % of requests),
  communications (about 10 %);
- activity_logs (one per four requests) over the last 30 days up to one hour ago: logins,
  request updates, failed logins, application errors and developer actions. Nothing is
  written in the last hour, so a fresh dev stack's health check starts without alerts;
- settings: a few application settings (kept if they already exist).

The data is deterministic for a given ``random_seed`` (times are relative to the start).

Re-running: the seed fills an *empty* application database only. If ``organizations`` or
``service_requests`` already hold rows it raises :class:`SeedRefused` and changes nothing,
unless ``reset=True``, which empties the seeded tables first. (Appending would make ids,
references and user names collide with the existing rows, and refusing keeps a benchmark
from silently measuring a different thing.)

Speed: everything runs in one transaction that empties the tables and loads them with
``COPY ... (FREEZE)`` (rows are written already frozen: no later vacuum rewrite). Rows are
produced as COPY text lines in Python and streamed while the server ingests them. Secondary
indexes and foreign keys of the seeded tables are dropped for the load and re-created after
(one sorted build and one validation query each, instead of row-by-row maintenance); their
definitions are read from the catalog, so columns or indexes added by later migrations are
kept as they are.
"""

from __future__ import annotations

import random
import time
from bisect import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import TypeVar

import psycopg
from psycopg import sql

from opsflow.config import redact_url

Progress = Callable[[str, int, int], None]
T = TypeVar("T")

#: Tables the seed fills, parents first.
SEEDED_TABLES: tuple[str, ...] = (
    "organizations",
    "departments",
    "users",
    "sessions",
    "service_requests",
    "assignments",
    "request_timeline",
    "attachments",
    "communications",
    "activity_logs",
)


class SeedRefused(RuntimeError):
    """The app database already holds data; the seed only fills an empty one."""


@dataclass
class SeedReport:
    """Rows written per table and the wall time it took."""

    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total_rows(self) -> int:
        """All rows written."""
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        """All rows written per second of wall time."""
        return self.total_rows / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Word lists (built in: no external data). Nothing here contains a tab, newline or backslash,
# so values go into COPY text lines without escaping.

_FIRST = (
    "Ava Liam Olivia Noah Emma Oliver Sophia Elijah Isabella Lucas Mia Mason Amelia Ethan Harper "
    "Logan Evelyn James Abigail Aiden Emily Jacob Ella Michael Elizabeth Daniel Camila Henry Luna "
    "Jackson Sofia Sebastian Avery Jack Mila Owen Aria Samuel Scarlett Matthew Penelope Joseph "
    "Layla Levi Chloe David Victoria John Madison Wyatt Eleanor Carter Grace Julian Nora Luke "
    "Riley Grayson Zoey Isaac Hannah Jayden Hazel Theodore Lily Gabriel Ellie Anthony Violet Dylan "
    "Lillian Leo Zoe Lincoln Stella Jaxon Aurora Asher Natalie Christopher Emilia Josiah Everly "
    "Andrew Leah Thomas Aubrey Joshua Willow Ezra Addison Hudson Lucy Charles Audrey Caleb Bella "
    "Priya Arjun Mei Hiroshi Fatima Omar Ines Mateo Lars Ingrid Kofi Amara Chen Yuki Rahul Zara"
).split()
_LAST = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
    "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips "
    "Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers "
    "Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson "
    "Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo "
    "Sanders Patel Myers Long Ross Foster Jimenez Okafor Tanaka Schmidt Novak Kowalski Haddad"
).split()
_STREETS = (
    "Main Oak Pine Maple Cedar Elm Washington Lake Hill Park View Church High Mill River Spring "
    "Center Market Union Water Bridge Forest Meadow Sunset Ridge Valley Highland Franklin Lincoln "
    "Jefferson Madison Jackson Adams Chestnut Walnut Willow Birch Poplar Harbor Station Garden"
).split()
_STREET_KINDS = ("St", "Ave", "Rd", "Blvd", "Ln", "Dr", "Ct", "Way", "Pl", "Terrace")
_CITIES = (
    "Springfield Riverton Fairview Greenville Madison Clinton Franklin Georgetown Salem Bristol "
    "Ashland Oakdale Milton Dover Newport Kingston Hudson Auburn Lexington Burlington"
).split()
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")
_ISSUES = (
    "Pothole",
    "Broken streetlight",
    "Missed trash pickup",
    "Graffiti",
    "Fallen tree",
    "Water main leak",
    "Blocked storm drain",
    "Noise complaint",
    "Abandoned vehicle",
    "Damaged sidewalk",
    "Illegal dumping",
    "Traffic signal outage",
    "Overgrown lot",
    "Stray animal",
    "Building code violation",
    "Sewer odor",
    "Park equipment damage",
    "Snow removal request",
)
_DETAILS = (
    "Reported by a resident; needs a site visit.",
    "Caller says it has been like this for a week.",
    "Photos attached by the reporter.",
    "Second report for this location this month.",
    "Near the school crossing, please prioritise.",
    "Reporter asked for a call back when fixed.",
    "Seen during a routine inspection.",
    "Possible safety hazard for pedestrians.",
)
_DEPARTMENTS = (
    ("PW", "Public Works"),
    ("PRK", "Parks and Recreation"),
    ("SAN", "Sanitation"),
    ("WTR", "Water Utility"),
    ("TRN", "Transportation"),
    ("BLD", "Building Inspection"),
    ("CE", "Code Enforcement"),
    ("ANM", "Animal Services"),
    ("ENV", "Environmental Health"),
    ("STR", "Streets and Lighting"),
)
_ORG_WORDS = (
    "Northwind Bluewater Redrock Silverlake Greenfield Stonebridge Clearview Highpoint Westbrook "
    "Eastgate Southport Riverside Lakeshore Pinecrest Goldcoast Ironwood Brightwater Fairhaven "
    "Oakridge Maplewood"
).split()
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/17.5",
    "Mozilla/5.0 (X11; Linux x86_64) Firefox/127.0",
    "FieldToolkit/3.4 (Android 14)",
    "FieldToolkit/3.4 (iOS 17.5)",
)
_ATTACHMENT_KINDS = (
    ("photo.jpg", "image/jpeg"),
    ("photo.png", "image/png"),
    ("report.pdf", "application/pdf"),
    ("video.mp4", "video/mp4"),
    ("notes.txt", "text/plain"),
)

_USER_ROLES = ("staff", "inspector", "supervisor", "technician", "viewer", "admin", "developer")
_USER_ROLE_WEIGHTS = (52, 20, 10, 7, 6, 4, 1)
_STATUSES = ("closed", "resolved", "new", "triaged", "assigned", "in_progress", "waiting_external")
_STATUS_WEIGHTS = (55, 20, 5, 3, 6, 7, 4)
_OPEN = frozenset({"new", "triaged", "assigned", "in_progress", "waiting_external"})
_ASSIGNED = frozenset({"assigned", "in_progress", "waiting_external", "resolved", "closed"})
_PRIORITIES = ("low", "normal", "high", "critical")
_PRIORITY_WEIGHTS = (20, 55, 20, 5)
_SLA_HOURS = {"low": 240, "normal": 120, "high": 48, "critical": 8}
_CHANNELS = ("web", "phone", "email", "mobile", "walk_in", "api")
_CHANNEL_WEIGHTS = (40, 20, 15, 15, 5, 5)
_TEMPLATES = ('["acknowledgement"]', '["acknowledgement","site_visit"]', "[]", '["follow_up"]')
# (action, level, weight). Developers' actions are generated separately.
_ACTIVITY = (
    ("user_login", "info", 55),
    ("request.update", "info", 20),
    ("request.assign", "info", 8),
    ("login_failed", "warning", 8),
    ("user_logout", "info", 5),
    ("error", "error", 3),
    ("export.download", "info", 1),
)
_DEV_ACTIONS = ("pipeline.update", "connector.update", "user.update", "settings.update")
_SETTINGS = (
    ("sla_default_hours", '{"low": 240, "normal": 120, "high": 48, "critical": 8}'),
    ("maintenance_mode", '{"enabled": false}'),
    ("session_timeout_minutes", "60"),
    ("password_policy", '{"min_length": 12, "require_mfa_for": ["admin", "developer"]}'),
)

DAY = 86_400


class _Clock:
    """Formats seconds-since-a-base-midnight as COPY timestamps without ``datetime`` per row.

    Formatting millions of datetimes is the seed's slowest Python step; two table lookups
    and an f-string are several times faster.
    """

    def __init__(self, now: datetime, days_back: int, days_ahead: int) -> None:
        base = (now - timedelta(days=days_back)).replace(hour=0, minute=0, second=0, microsecond=0)
        self.base = base
        self.now = int((now - base).total_seconds())
        n_days = days_back + days_ahead + 2
        self._days = [(base + timedelta(days=d)).strftime("%Y-%m-%d") for d in range(n_days)]
        self._tod = [
            f"{h:02d}:{m:02d}:{s:02d}+00" for h in range(24) for m in range(60) for s in range(60)
        ]

    def __call__(self, sec: int) -> str:
        return f"{self._days[sec // DAY]} {self._tod[sec % DAY]}"


def _picker(rng: random.Random, values: Sequence[T], weights: Sequence[int]) -> Callable[[], T]:
    cum = list(accumulate(weights))
    total = cum[-1]
    r = rng.random

    def pick() -> T:
        return values[bisect(cum, r() * total)]

    return pick


def _copy(
    cur: psycopg.Cursor[tuple[object, ...]],
    table: str,
    columns: str,
    lines: Iterable[str],
    total: int,
    progress: Progress | None,
    *,
    batch: int = 20_000,
) -> int:
    """Stream COPY text ``lines`` (each ending with a newline) into ``table``."""
    stmt = sql.SQL("COPY {} ({}) FROM STDIN WITH (FREEZE)").format(
        sql.Identifier(table), sql.SQL(columns)
    )
    n = 0
    buf: list[str] = []
    with cur.copy(stmt) as copy:
        for line in lines:
            buf.append(line)
            if len(buf) >= batch:
                copy.write("".join(buf))
                n += len(buf)
                buf.clear()
                if progress:
                    progress(table, n, total)
        if buf:
            copy.write("".join(buf))
            n += len(buf)
    if progress:
        progress(table, n, total)
    return n


@dataclass
class _Org:
    id: int
    depts: list[int]
    dept_codes: list[str]
    users: list[int]  # staff-like users who get assignments
    user_names: list[str]


class _Generator:
    """Row producers; every random draw comes from one seeded ``random.Random``."""

    def __init__(self, *, requests: int, tenants: int, random_seed: int, now: datetime) -> None:
        self.n_requests = requests
        self.n_tenants = tenants
        # Fake data, reproducible by seed: not a security use of randomness.
        self.rng = random.Random(random_seed)  # noqa: S311
        self.clock = _Clock(now, days_back=400, days_ahead=10)
        self.orgs: list[_Org] = []
        self.users: list[tuple[int, str, str]] = []  # (id, username, role)
        self.n_users = max(tenants * 8, requests // 100)
        self.n_sessions = self.n_users * 2
        self.n_activity = max(200, requests // 4)
        self.assignment_count = 0

    def _ts(self, sec: int) -> str:
        return self.clock(sec)

    def _person(self) -> tuple[str, str, str]:
        r = self.rng.random
        first = _FIRST[int(r() * len(_FIRST))]
        last = _LAST[int(r() * len(_LAST))]
        return first, last, f"{first} {last}"

    def _phone(self) -> str:
        # 555-01xx is reserved for fiction in the North American numbering plan.
        r = self.rng.random
        return f"+1-{200 + int(r() * 800)}-555-01{int(r() * 100):02d}"

    def _address(self) -> str:
        r = self.rng.random
        return (
            f"{1 + int(r() * 9999)} {_STREETS[int(r() * len(_STREETS))]} "
            f"{_STREET_KINDS[int(r() * len(_STREET_KINDS))]}, {_CITIES[int(r() * len(_CITIES))]}"
        )

    def organizations(self) -> Iterator[str]:
        """Tenants, about 20 % dedicated."""
        r = self.rng.random
        ts = self._ts
        for i in range(1, self.n_tenants + 1):
            word = _ORG_WORDS[(i - 1) % len(_ORG_WORDS)]
            placement = "dedicated" if r() < 0.2 else "shared"
            created = self.clock.now - 400 * DAY + int(r() * 30 * DAY)
            self.orgs.append(_Org(i, [], [], [], []))
            yield f"{i}\tt{i:04d}-{word.lower()}\t{word} {i}\t{placement}\t{ts(created)}\n"

    def departments(self) -> Iterator[str]:
        """4 to 8 departments per tenant."""
        r = self.rng.random
        dept_id = 0
        for org in self.orgs:
            k = 4 + int(r() * 5)
            for code, name in self.rng.sample(_DEPARTMENTS, k):
                dept_id += 1
                org.depts.append(dept_id)
                org.dept_codes.append(code)
                yield (
                    f"{dept_id}\t{org.id}\t{code}\t{name}\t"
                    f"{code.lower()}-supervisor@t{org.id:04d}.example.com\n"
                )

    def users_rows(self) -> Iterator[str]:
        """Users; every tenant gets an admin, and there are at least three developers."""
        r = self.rng.random
        ts = self._ts
        now = self.clock.now
        pick_role = _picker(self.rng, _USER_ROLES, _USER_ROLE_WEIGHTS)
        n_orgs = len(self.orgs)
        developers = 0
        for uid in range(1, self.n_users + 1):
            org = self.orgs[(uid - 1) % n_orgs]
            if uid <= n_orgs:
                role = "admin"
            elif developers < 3 and uid > self.n_users - 3:
                role = "developer"
            else:
                role = pick_role()
            developers += role == "developer"
            first, last, full = self._person()
            username = f"{first.lower()}.{last.lower()}.{uid}"
            email = f"{first.lower()}.{last.lower()}{uid}@t{org.id:04d}.example.com"
            dept = (
                r"\N"
                if role in ("admin", "developer")
                else str(org.depts[int(r() * len(org.depts))])
            )
            active = r() < 0.92 or role == "admin"
            created = now - 390 * DAY + int(r() * 360 * DAY)
            last_login = ts(now - 3600 - int(r() * 30 * DAY)) if active else r"\N"
            must_change = "t" if r() < 0.03 else "f"
            if role in ("staff", "inspector", "supervisor", "technician") and active:
                org.users.append(uid)
                org.user_names.append(username)
            self.users.append((uid, username, role))
            yield (
                f"{uid}\t{org.id}\t{dept}\t{username}\t{email}\t{full}\t{self._phone()}\t{role}\t"
                f"{'t' if active else 'f'}\t$seeded$not-a-usable-hash\t{must_change}\t"
                f"{last_login}\t{ts(created)}\n"
            )

    def sessions(self) -> Iterator[str]:
        """About two sessions per user over the last two weeks; some expired or revoked."""
        r = self.rng.random
        ts = self._ts
        now = self.clock.now
        n_users = len(self.users)
        for sid in range(1, self.n_sessions + 1):
            uid = 1 + int(r() * n_users)
            created = now - int(r() * 14 * DAY)
            expires = created + 8 * 3600
            revoked = ts(created + int(r() * 8 * 3600)) if r() < 0.1 else r"\N"
            ip = f"10.{int(r() * 256)}.{int(r() * 256)}.{1 + int(r() * 254)}"
            agent = _USER_AGENTS[int(r() * len(_USER_AGENTS))]
            yield f"{sid}\t{uid}\t{ts(created)}\t{ts(expires)}\t{revoked}\t{ip}\t{agent}\n"

    def requests_and_children(self) -> Iterator[str]:
        """Service requests; assignments, timeline, attachments and messages are collected."""
        r = self.rng.random
        ts = self._ts
        now = self.clock.now
        pick_status = _picker(self.rng, _STATUSES, _STATUS_WEIGHTS)
        pick_priority = _picker(self.rng, _PRIORITIES, _PRIORITY_WEIGHTS)
        pick_channel = _picker(self.rng, _CHANNELS, _CHANNEL_WEIGHTS)
        orgs = self.orgs
        n_orgs = len(orgs)
        self.assignments: list[str] = []
        self.timeline: list[str] = []
        self.attachments: list[str] = []
        self.communications: list[str] = []
        n_first, n_last, n_streets, n_kinds, n_cities = (
            len(_FIRST),
            len(_LAST),
            len(_STREETS),
            len(_STREET_KINDS),
            len(_CITIES),
        )
        assignment_id = timeline_id = attachment_id = communication_id = 0
        for rid in range(1, self.n_requests + 1):
            # A skewed tenant size: a few large tenants, many small ones.
            org = orgs[int(n_orgs * r() * r())]
            dept_i = int(r() * len(org.depts))
            status = pick_status()
            priority = pick_priority()
            channel = pick_channel()
            if status in _OPEN:
                created = now - int(r() * 14 * DAY)
                # Due between 3 days ago and 7 days ahead: some breached, most upcoming.
                sla = now - 3 * DAY + int(r() * 10 * DAY)
                resolved_s = closed_s = r"\N"
                updated = created + int((now - created) * r())
            else:
                created = now - 15 * DAY - int(r() * 350 * DAY)
                sla = created + _SLA_HOURS[priority] * 3600
                resolved = created + 3600 + int(r() * 10 * DAY)
                resolved_s = ts(resolved)
                if status == "closed":
                    closed = resolved + int(r() * 3 * DAY)
                    closed_s = ts(closed)
                    updated = closed
                else:
                    closed_s = r"\N"
                    updated = resolved
            first = _FIRST[int(r() * n_first)]
            last = _LAST[int(r() * n_last)]
            street = _STREETS[int(r() * n_streets)]
            issue = _ISSUES[int(r() * len(_ISSUES))]
            expedited = "t" if (priority == "critical" and r() < 0.5) or r() < 0.02 else "f"
            created_s = ts(created)
            sla_s = ts(sla)
            yield (
                f"{rid}\t{org.id}\t{org.depts[dept_i]}\tSR-{rid:08d}\t{issue} on {street}\t"
                f"{_DETAILS[int(r() * len(_DETAILS))]}\t{status}\t{priority}\t{channel}\t"
                f"{sla_s}\t{first} {last}\t"
                f"{first.lower()}.{last.lower()}{int(r() * 1000)}@"
                f"{_EMAIL_DOMAINS[int(r() * 4)]}\t"
                f"+1-{200 + int(r() * 800)}-555-01{int(r() * 100):02d}\t"
                f"{1 + int(r() * 9999)} {street} {_STREET_KINDS[int(r() * n_kinds)]}, "
                f"{_CITIES[int(r() * n_cities)]}\t{expedited}\t{created_s}\t{ts(updated)}\t"
                f"{resolved_s}\t{closed_s}\n"
            )
            timeline_id += 1
            self.timeline.append(
                f"{timeline_id}\t{rid}\t{created_s}\tsystem:intake\tcreated\t"
                f"Request received by {channel}\t{{}}\n"
            )
            if status in _ASSIGNED and org.users:
                ui = int(r() * len(org.users))
                assigned_at = ts(created + int(r() * 4 * 3600))
                assignment_id += 1
                self.assignments.append(
                    f"{assignment_id}\t{rid}\t{org.depts[dept_i]}\t{org.users[ui]}\t"
                    f"supervisor:{org.dept_codes[dept_i].lower()}\t{priority}\t{sla_s}\t"
                    f"{_TEMPLATES[int(r() * 4)]}\t{assigned_at}\n"
                )
                timeline_id += 1
                self.timeline.append(
                    f"{timeline_id}\t{rid}\t{assigned_at}\t{org.user_names[ui]}\tassigned\t"
                    f"Assigned to {org.dept_codes[dept_i]}\t{{}}\n"
                )
            if r() < 0.15:
                attachment_id += 1
                name, ctype = _ATTACHMENT_KINDS[int(r() * len(_ATTACHMENT_KINDS))]
                self.attachments.append(
                    f"{attachment_id}\t{rid}\ttenants/{org.id}/requests/{rid}/{attachment_id}-{name}"
                    f"\t{name}\t{ctype}\t{1024 + int(r() * 5_000_000)}\t"
                    f"{self.rng.getrandbits(256):064x}\t{created_s}\n"
                )
            if r() < 0.10:
                communication_id += 1
                self.communications.append(
                    f"{communication_id}\t{rid}\temail\toutbound\t"
                    f"{first.lower()}.{last.lower()}@example.com\tYour request SR-{rid:08d}\t"
                    f"Thank you, we received your report.\t{ts(created + 600)}\n"
                )

    def activity_logs(self) -> Iterator[str]:
        """Activity over the last 30 days up to one hour ago, developers included."""
        r = self.rng.random
        ts = self._ts
        now = self.clock.now
        pick = _picker(self.rng, [(a, lv) for a, lv, _ in _ACTIVITY], [w for *_, w in _ACTIVITY])
        developers = [u for u in self.users if u[2] == "developer"]
        users = self.users
        n_users = len(users)
        for lid in range(1, self.n_activity + 1):
            occurred = now - 3600 - int(r() * 30 * DAY)
            if r() < 0.02 and developers:
                uid, username, role = developers[int(r() * len(developers))]
                action, level = _DEV_ACTIONS[int(r() * len(_DEV_ACTIONS))], "info"
                target = f"pipeline:{1 + int(r() * 50)}"
            else:
                uid, username, role = users[int(r() * n_users)]
                action, level = pick()
                target = f"request:{1 + int(r() * self.n_requests)}"
            ip = f"192.0.2.{1 + int(r() * 254)}"  # TEST-NET-1
            yield (
                f"{lid}\t{uid}\t{username}\t{role}\t{action}\t{target}\t{level}\t{ip}\t{{}}\t"
                f"{ts(occurred)}\n"
            )


_COLUMNS = {
    "organizations": "id, slug, name, placement, created_at",
    "departments": "id, organization_id, code, name, supervisor_email",
    "users": (
        "id, organization_id, department_id, username, email, full_name, phone, role, "
        "is_active, hashed_password, must_change_password, last_login_at, created_at"
    ),
    "sessions": "id, user_id, created_at, expires_at, revoked_at, ip, user_agent",
    "service_requests": (
        "id, organization_id, department_id, reference, title, description, status, priority, "
        "channel, sla_due_at, reporter_name, reporter_email, reporter_phone, address, expedited, "
        "created_at, updated_at, resolved_at, closed_at"
    ),
    "assignments": (
        "id, request_id, department_id, assignee_id, assigned_by, priority, sla_due_at, "
        "templates, created_at"
    ),
    "request_timeline": "id, request_id, occurred_at, actor, kind, message, details",
    "attachments": (
        "id, request_id, object_key, filename, content_type, size_bytes, sha256, created_at"
    ),
    "communications": "id, request_id, channel, direction, recipient, subject, body, sent_at",
    "activity_logs": (
        "id, user_id, username, role, action, target, level, ip, details, occurred_at"
    ),
}


def _deferred_ddl(cur: psycopg.Cursor[tuple[object, ...]]) -> tuple[list[str], list[str]]:
    """Read the seeded tables' foreign keys and secondary indexes: (drop, create) statements.

    Primary keys and unique constraints stay (they are needed to check the data); plain
    indexes and foreign keys go and come back after the load.
    """
    tables = list(SEEDED_TABLES)
    cur.execute(
        """
        SELECT format('ALTER TABLE %%s DROP CONSTRAINT %%I', c.conrelid::regclass, c.conname),
               format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s', c.conrelid::regclass, c.conname,
                      pg_get_constraintdef(c.oid))
        FROM pg_constraint c
        WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
          AND (c.conrelid::regclass::text = ANY(%s) OR c.confrelid::regclass::text = ANY(%s))
        ORDER BY c.conname
        """,
        (tables, tables),
    )
    fks = [(str(a), str(b)) for a, b in cur.fetchall()]
    cur.execute(
        """
        SELECT format('DROP INDEX %%I.%%I', i.schemaname, i.indexname), i.indexdef
        FROM pg_indexes i
        JOIN pg_class ic ON ic.relname = i.indexname
        JOIN pg_namespace n ON n.oid = ic.relnamespace AND n.nspname = i.schemaname
        WHERE i.schemaname = 'public' AND i.tablename = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = ic.oid)
        ORDER BY i.indexname
        """,
        (tables,),
    )
    indexes = [(str(a), str(b)) for a, b in cur.fetchall()]
    drops = [d for d, _ in fks] + [d for d, _ in indexes]
    creates = [c for _, c in indexes] + [c for _, c in fks]
    return drops, creates


def seed(
    target_url: str,
    *,
    requests: int,
    tenants: int = 40,
    random_seed: int = 42,
    progress: Progress | None = None,
    reset: bool = False,
) -> SeedReport:
    """Fill the app database with fake tenants, users, requests and activity (see module doc).

    Args:
        target_url: libpq URL of the app database (``TARGET_DATABASE_URL``), migrated to head.
        requests: Number of service requests.
        tenants: Number of organizations.
        random_seed: Seed of the random generator (same seed, same data).
        progress: Called as ``progress(table, rows_done, rows_total)`` while loading.
        reset: Empty the seeded tables first instead of refusing a non-empty database.

    Returns:
        Rows written per table and the wall time.

    Raises:
        SeedRefused: The database already holds organizations or requests and ``reset`` is
            false.
        ValueError: ``requests`` or ``tenants`` is not positive.

    """
    if requests < 1 or tenants < 1:
        raise ValueError("requests and tenants must be positive")
    started = time.perf_counter()
    gen = _Generator(
        requests=requests, tenants=tenants, random_seed=random_seed, now=datetime.now(UTC)
    )
    report = SeedReport()
    url = target_url.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        conn = psycopg.connect(url)
    except psycopg.OperationalError as exc:
        raise psycopg.OperationalError(
            f"cannot connect to the app database {redact_url(url)}"
        ) from exc
    with conn, conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
        cur.execute(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM organizations LIMIT 1) o)"
            " + (SELECT count(*) FROM (SELECT 1 FROM service_requests LIMIT 1) s)"
        )
        row = cur.fetchone()
        if row and row[0] and not reset:
            raise SeedRefused(
                "the app database already holds organizations or service requests; the seed "
                "fills an empty database only (re-create the database, or reset it: "
                "seed(..., reset=True) empties the seeded tables first)"
            )
        cur.execute(
            sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in SEEDED_TABLES)
            )
        )
        drops, creates = _deferred_ddl(cur)
        for stmt in drops:
            cur.execute(stmt.encode())

        def load(table: str, lines: Iterable[str], total: int) -> None:
            report.rows[table] = _copy(cur, table, _COLUMNS[table], lines, total, progress)

        load("organizations", gen.organizations(), tenants)
        load("departments", gen.departments(), 0)
        load("users", gen.users_rows(), gen.n_users)
        load("sessions", gen.sessions(), gen.n_sessions)
        load("service_requests", gen.requests_and_children(), requests)
        load("assignments", gen.assignments, len(gen.assignments))
        load("request_timeline", gen.timeline, len(gen.timeline))
        load("attachments", gen.attachments, len(gen.attachments))
        load("communications", gen.communications, len(gen.communications))
        load("activity_logs", gen.activity_logs(), gen.n_activity)
        for n, stmt in enumerate(creates, 1):
            cur.execute(stmt.encode())
            if progress:
                progress("indexes", n, len(creates))
        for table in SEEDED_TABLES:
            cur.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence({t}, 'id'),"
                    " GREATEST((SELECT max(id) FROM {i}), 1),"
                    " (SELECT max(id) FROM {i}) IS NOT NULL)"
                ).format(t=sql.Literal(table), i=sql.Identifier(table))
            )
        for key, value in _SETTINGS:
            cur.execute(
                "INSERT INTO settings (key, value, updated_by) VALUES (%s, %s::jsonb, 'seed')"
                " ON CONFLICT (key) DO NOTHING",
                (key, value),
            )
        report.rows["settings"] = len(_SETTINGS)
    conn.close()
    # The planner needs statistics for the fresh tables; ANALYZE outside the load's transaction.
    with psycopg.connect(url, autocommit=True) as conn2:
        conn2.execute(
            sql.SQL("ANALYZE {}").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in SEEDED_TABLES)
            )
        )
    report.seconds = time.perf_counter() - started
    return report
