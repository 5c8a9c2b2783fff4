"""The worker's S3 client is built on first use, once."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from opsflow.adapters import s3
from opsflow.config import Settings


def test_lazy_s3_client_builds_once_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []

    class FakeClient:
        def head_bucket(self, Bucket: str) -> str:
            return f"head {Bucket}"

    def make(settings: Settings) -> FakeClient:
        built.append(settings)
        return FakeClient()

    monkeypatch.setattr(s3, "make_s3_client", make)
    settings = Settings(s3_endpoint_url="http://127.0.0.1:1")
    client = s3.lazy_s3_client(settings)
    assert built == []  # nothing built at start-up
    calls = [threading.Thread(target=client.head_bucket, args=("b",)) for _ in range(8)]
    for t in calls:
        t.start()
    for t in calls:
        t.join()
    assert client.head_bucket(Bucket="audit") == "head audit"
    assert built == [settings]  # once, whatever the number of threads
