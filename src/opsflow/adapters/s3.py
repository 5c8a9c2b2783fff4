"""S3 client construction and small helpers (boto3, SigV4)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, cast

from opsflow.config import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def make_s3_client(settings: Settings) -> S3Client:
    """Return a boto3 S3 client for the configured endpoint (SeaweedFS, MinIO or AWS)."""
    # Imported here: boto3 takes 0.15 s to import, and a worker needs it only when it first
    # touches S3 (see _LazyS3Client), not before it serves a restart's backlog.
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id.get_secret_value() or None,
        aws_secret_access_key=settings.s3_secret_access_key.get_secret_value() or None,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


class _LazyS3Client:
    """Stands in for the S3 client and builds it on first use, once, from any thread.

    Importing boto3 and building a client (the S3 service model) take a third of a second
    of a worker's start, which a restarted worker's backlog of escalations, needing no S3,
    should not wait for.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: S3Client | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = make_s3_client(self._settings)
                client = self._client
        return getattr(client, name)


def lazy_s3_client(settings: Settings) -> S3Client:
    """Return an S3 client that is built when first used (see :class:`_LazyS3Client`)."""
    return cast("S3Client", _LazyS3Client(settings))


# The dev stack's readiness probe keeps one tiny object per bucket under this prefix.
PROBE_PREFIX = ".opsflow-probe/"


def bucket_usage(client: S3Client, bucket: str) -> tuple[int, int]:
    """Return (object count, total bytes) of a bucket by listing it (probe objects excluded)."""
    objects = 0
    size = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if obj.get("Key", "").startswith(PROBE_PREFIX):
                continue
            objects += 1
            size += int(obj.get("Size", 0))
    return objects, size
