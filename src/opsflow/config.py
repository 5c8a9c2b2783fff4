"""Settings from the environment.

Every process (worker, API, CLI, dev stack) reads its settings here. Real environment variables
win; after them comes the file ``.opsflow/env`` that ``make dev`` writes (found under
``OPSFLOW_HOME``, else the current directory), so a CLI started in a second terminal of the
checkout talks to the running dev stack with no exports. Secrets are ``SecretStr`` and never
appear in ``repr``, logs or error messages.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def state_dir() -> Path:
    """Return the folder that holds the dev stack's state (``.opsflow/``)."""
    home = os.environ.get("OPSFLOW_HOME")
    return Path(home) if home else Path.cwd() / ".opsflow"


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe to log or show)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class Settings(BaseSettings):
    """All of opsflow's configuration, one field per environment variable (upper-cased)."""

    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", case_sensitive=False, populate_by_name=True
    )

    # Where the platform runs: "production" switches mail test mode off by default and
    # makes GET /settings/dev-role-production report is_production=true.
    opsflow_env: str = "development"

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "opsflow"
    temporal_ui_url: str = "http://127.0.0.1:8233"
    temporal_api_key: SecretStr | None = None
    temporal_tls: bool = False

    # The opsflow database, as the service role (INSERT/SELECT only on audit_events).
    database_url: SecretStr = SecretStr("postgresql://opsflow_service@127.0.0.1:5432/opsflow")
    # The owner of the opsflow schema, used by migrations only. Defaults to database_url.
    database_admin_url: SecretStr | None = None
    # The operated application's database.
    target_database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/app")
    db_pool_max: int = 10

    s3_endpoint_url: str | None = "http://127.0.0.1:8333"
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr = SecretStr("")
    s3_secret_access_key: SecretStr = SecretStr("")
    # The seed names the bucket s3://msds-audit-exports/YYYY/MM/DD/.
    s3_audit_bucket: str = "msds-audit-exports"
    s3_backup_bucket: str = "opsflow-backups"
    s3_attachments_bucket: str = "opsflow-attachments"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_from: str = "opsflow@localhost"
    # Outside production, mail goes only to allowlisted addresses (others are dropped and
    # recorded as suppressed).
    smtp_test_mode: bool | None = None
    # The reserved example domains (RFC 2606) and their subdomains, which the seed uses.
    mail_allowlist: list[str] = Field(
        default_factory=lambda: (
            [f"*@{sub}example.{tld}" for tld in ("com", "org", "net") for sub in ("", "*.")]
            + ["*@localhost"]
        )
    )
    oncall_emails: list[str] = Field(default_factory=lambda: ["oncall@example.com"])

    sms_webhook_url: str | None = "http://127.0.0.1:1080/sms"
    sms_webhook_token: SecretStr | None = None

    # The operated application's health URL (the seed's /api/health, {"status":"ok"}).
    app_health_url: str = "http://127.0.0.1:8080/api/health"

    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_public_url: str = "http://127.0.0.1:8080"
    # Seconds a verified token is answered from memory while the database's announcements of
    # token changes are received (opsflow.adapters.token_cache); 0 reads api_tokens on every
    # call.
    api_token_cache_s: float = Field(default=60.0, ge=0)
    worker_metrics_port: int = 9464
    worker_max_concurrent_activities: int = 50
    worker_workflow_task_polls: int = 20
    # Workflows kept in the worker's cache (sticky execution); 0 turns sticky queues off.
    # A signal to a workflow that is not cached makes the worker fetch its whole history and
    # replay it: with 4,000 open SLA workflows and 20 escalations in flight that cost the
    # worker 12.5 ms of CPU per escalation and the server 12.2 ms, against 7.9 and 9.5 ms
    # with all of them cached. A cached SLA workflow costs the worker about 75 KB, so size
    # this to the long-lived workflows (open requests) a worker serves: 10,000 is about 750 MB.
    worker_max_cached_workflows: int = Field(default=10_000, ge=0)
    # Seconds after the worker's start before it loads dbt for the audit export (see
    # opsflow.adapters.dbt.warm_up_in_background).
    worker_dbt_warmup_delay: float = Field(default=20.0, ge=0)

    # health-check thresholds (the seed's alert rules).
    health_slow_query_seconds: float = 30.0
    health_app_errors_per_hour: int = 10
    health_failed_logins_per_user_hour: int = 5
    health_p95_ms: float = 1000.0
    health_pool_pct: float = 90.0
    health_storage_pct: float = 90.0
    health_storage_quota_bytes: int = 50 * 1024**3
    health_disk_path: str = "/"

    # The CLI's view of the API.
    opsflow_url: str = "http://127.0.0.1:8080"
    opsflow_token: SecretStr | None = None

    schedule_timezone: str = "UTC"

    # audit-export-nightly: the keyring ("kid:base64key,..." or a secret file of such entries),
    # the key id new packages use (default: the last entry), and who gets the package mail.
    # Outside production with neither set, a development key is created under .opsflow/.
    audit_export_keys: SecretStr | None = None
    audit_export_keys_file: str | None = None
    audit_export_key_id: str | None = None
    compliance_emails: list[str] = Field(default_factory=lambda: ["compliance@example.com"])
    # Models streamed at once, each on its own connection to the one exported snapshot (1: one
    # after the other through a single connection). See runbooks/audit-export-nightly.md.
    audit_export_parallel: int = Field(default=2, ge=1, le=8)
    log_level: str = "INFO"

    @property
    def is_production(self) -> bool:
        """True when opsflow operates a production system."""
        return self.opsflow_env.lower() in {"prod", "production"}

    @property
    def mail_test_mode(self) -> bool:
        """Mail test mode: explicit SMTP_TEST_MODE, else on everywhere but production."""
        if self.smtp_test_mode is not None:
            return self.smtp_test_mode
        return not self.is_production

    @property
    def admin_database_url(self) -> str:
        """The URL migrations connect with."""
        url = self.database_admin_url or self.database_url
        return url.get_secret_value()


def env_file_path() -> Path:
    """Return the path of the env file the dev stack writes."""
    return state_dir() / "env"


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, then ``.opsflow/env``, then defaults."""
    path = env_file_path()
    env_file = str(path) if path.is_file() else None
    return Settings(_env_file=env_file, **overrides)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (read once)."""
    return load_settings()
