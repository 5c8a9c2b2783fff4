"""A small typed wrapper of the opsflow HTTP API, used by the ``opsflow`` CLI.

The CLI never talks to Temporal for the runbook commands: every start, signal, update, query and
cancel goes through the API, so roles are checked and audited in one place. Errors become
:class:`ApiError` (with the API's own message) or :class:`ApiUnreachable` (with the URL and a
hint), never a traceback. The bearer token is only ever put in the ``Authorization`` header; it
is not part of any message this module builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote

import httpx

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class CliError(Exception):
    """An error the CLI reports as one message on stderr with a given exit code."""

    exit_code: int = 1


class ApiError(CliError):
    """The API answered with an error status; ``message`` is its own explanation."""

    def __init__(self, status_code: int, message: str, *, method: str, path: str) -> None:
        super().__init__(f"{method} {path} failed ({status_code}): {message}")
        self.status_code = status_code
        self.message = message
        self.method = method
        self.path = path


class ApiUnreachable(CliError):
    """The API could not be reached at all (refused, DNS, timeout)."""

    exit_code = 3

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach the opsflow API at {url} ({reason}). Is it running? Start the "
            "local stack with `make dev` (or `opsflow dev`), or point OPSFLOW_URL / --url at "
            "your API."
        )
        self.url = url


def error_message(response: httpx.Response) -> str:
    """Return the API's explanation of an error response, as one readable string.

    The API answers ``{"detail": "message"}``, or for validation errors
    ``{"detail": [{"loc", "msg", "type"}], "message": "..."}``; anything else (a proxy's HTML
    page, an empty body) is shown shortened, so the operator still sees what came back.
    """
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:300] if text else response.reason_phrase or "no message"
    if not isinstance(body, dict):
        return str(body)[:300]
    detail = body.get("detail")
    message = body.get("message")
    lines: list[str] = []
    if isinstance(message, str) and message:
        lines.append(message)
    if isinstance(detail, str):
        if detail not in lines:
            lines.append(detail)
    elif isinstance(detail, list):
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                msg = str(item.get("msg", item))
                line = f"{loc}: {msg}" if loc else msg
            else:
                line = str(item)
            # The summary message often already names each field; avoid repeating it.
            if not any(line in existing for existing in lines):
                lines.append(line)
    elif detail is not None:
        lines.append(str(detail))
    return "\n  ".join(lines) if lines else response.reason_phrase or "no message"


def _segment(value: str) -> str:
    # Workflow ids carry ':' and may carry '/', so quote every path segment fully.
    return quote(value, safe="")


class ApiClient:
    """Synchronous client of the opsflow API (one ``httpx.Client``, closed by ``close``).

    Args:
        base_url: The API's root, e.g. ``http://127.0.0.1:8080``.
        token: The bearer token, or None to call without one (the API then answers 401).
        transport: An ``httpx`` transport to use instead of the network (tests inject a
            ``MockTransport`` here).
        timeout: Per-request timeout.

    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "opsflow-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, transport=transport, timeout=timeout
        )

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        send_body: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request and return the response, raising on any error status.

        Args:
            method: HTTP method.
            path: Path below the base URL (already quoted).
            params: Query parameters; None values are left out.
            json_body: The JSON body.
            send_body: Send ``json_body`` even when it is None (as JSON ``null``).
            headers: Extra headers.

        Raises:
            ApiError: The API answered 4xx/5xx.
            ApiUnreachable: The API could not be reached.

        """
        query = {k: v for k, v in (params or {}).items() if v is not None}
        kwargs: dict[str, Any] = {"params": query, "headers": dict(headers or {})}
        if json_body is not None or send_body:
            kwargs["json"] = json_body
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ApiUnreachable(self.base_url, "connection refused or host unknown") from exc
        except httpx.TimeoutException as exc:
            raise ApiUnreachable(self.base_url, "timed out") from exc
        except httpx.TransportError as exc:
            raise ApiUnreachable(self.base_url, type(exc).__name__) from exc
        if response.is_error:
            raise ApiError(response.status_code, error_message(response), method=method, path=path)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(
                response.status_code,
                "the API answered with a body that is not JSON",
                method=method,
                path=path,
            ) from exc

    # --- catalog and runs -------------------------------------------------------------

    def runbooks(self) -> list[dict[str, Any]]:
        """GET /runbooks: the catalog."""
        return cast(list[dict[str, Any]], self._json("GET", "/runbooks"))

    def runbook(self, name: str) -> dict[str, Any] | None:
        """Return one runbook of the catalog by name, or None."""
        for spec in self.runbooks():
            if spec.get("name") == name:
                return spec
        return None

    def start_run(
        self, name: str, body: dict[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """POST /runbooks/{name}/runs.

        Returns:
            The API's answer and whether a new run was started (201) rather than an
            existing one returned (200).

        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        path = f"/runbooks/{_segment(name)}/runs"
        response = self.request("POST", path, json_body=body, send_body=True, headers=headers)
        return cast(dict[str, Any], response.json()), response.status_code == 201

    def get_run(self, run_id: str) -> dict[str, Any]:
        """GET /runs/{id}."""
        return cast(dict[str, Any], self._json("GET", f"/runs/{_segment(run_id)}"))

    def list_runs(self, **filters: Any) -> dict[str, Any]:
        """GET /runs with filters (runbook, status, actor, tenant, since, until, limit, offset)."""
        return cast(dict[str, Any], self._json("GET", "/runs", params=filters))

    def signal(self, run_id: str, name: str, arg: Any, *, has_arg: bool) -> dict[str, Any]:
        """POST /runs/{id}/signals/{name} with the signal's argument as the body."""
        path = f"/runs/{_segment(run_id)}/signals/{_segment(name)}"
        return cast(dict[str, Any], self._json("POST", path, json_body=arg, send_body=has_arg))

    def update(self, run_id: str, name: str, arg: Any, *, has_arg: bool) -> dict[str, Any]:
        """POST /runs/{id}/updates/{name} with the update's argument as the body."""
        path = f"/runs/{_segment(run_id)}/updates/{_segment(name)}"
        return cast(dict[str, Any], self._json("POST", path, json_body=arg, send_body=has_arg))

    def query(self, run_id: str, name: str) -> dict[str, Any]:
        """GET /runs/{id}/queries/{name}."""
        path = f"/runs/{_segment(run_id)}/queries/{_segment(name)}"
        return cast(dict[str, Any], self._json("GET", path))

    def cancel(self, run_id: str) -> dict[str, Any]:
        """POST /runs/{id}/cancel."""
        return cast(dict[str, Any], self._json("POST", f"/runs/{_segment(run_id)}/cancel"))

    # --- health and audit -------------------------------------------------------------

    def health_report(self) -> dict[str, Any]:
        """GET /health/report: the latest health check and the open alerts."""
        return cast(dict[str, Any], self._json("GET", "/health/report"))

    def audit(self, **filters: Any) -> dict[str, Any]:
        """GET /audit with filters (actor, action, target, since, until, after_id, limit)."""
        return cast(dict[str, Any], self._json("GET", "/audit", params=filters))
