"""S3 client construction and small helpers (boto3, SigV4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from opsflow.config import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def make_s3_client(settings: Settings) -> S3Client:
    """Return a boto3 S3 client for the configured endpoint (SeaweedFS, MinIO or AWS)."""
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
