"""Talking to a Label Studio server: settings from the environment, bounded retries, clear errors.

:meth:`Connection.check_answers` asks ``GET /health`` first, within ``ILOTS_CONNECT_TIMEOUT``
(5 s): a server that accepts connections but never answers fails in seconds. Each later request
waits at most ``ILOTS_LABEL_STUDIO_TIMEOUT`` (60 s). Every call to the server goes through
:meth:`Connection.call`, which retries connection failures and gateway errors (502, 503, 504)
with exponential backoff, then raises an :class:`~ilots.core.errors.IlotsError` of one sentence.
The API key never appears in a message.

Two kinds of key work, as in Label Studio's own SDK: a legacy token (sent as ``Token <key>``) and a
personal access token, a JWT refresh token that is exchanged at ``/api/token/refresh/`` for a
short-lived access token (sent as ``Bearer <access>``, exchanged again when the server refuses it).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import httpx

from ilots.core.errors import IlotsError
from ilots.core.timeouts import CONNECT_TIMEOUT_ENV, connect_timeout, seconds_from_env

log = logging.getLogger(__name__)

URL_ENV = "LABEL_STUDIO_URL"
KEY_ENV = "LABEL_STUDIO_API_KEY"
TIMEOUT_ENV = "ILOTS_LABEL_STUDIO_TIMEOUT"  # each request (the first: ILOTS_CONNECT_TIMEOUT)

TRIES = 4
BACKOFF_S = 0.5
TIMEOUT_S = 60.0
PAGE_SIZE = 100
_RETRY_STATUSES = (502, 503, 504)

T = TypeVar("T")


def settings_from_env() -> tuple[str, str]:
    """``(url, api_key)`` from ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``."""
    url, key = os.environ.get(URL_ENV, "").strip(), os.environ.get(KEY_ENV, "").strip()
    if not url or not key:
        missing = " and ".join(n for n, v in ((URL_ENV, url), (KEY_ENV, key)) if not v)
        raise IlotsError(
            f"{missing} not set: export the server's URL and an access token (Account & Settings "
            "in Label Studio) in the environment."
        )
    return url.rstrip("/"), key


@dataclass
class Connection:
    """A Label Studio client with retries and error messages fit for users."""

    url: str
    api_key: str
    tries: int = TRIES
    backoff_s: float = BACKOFF_S
    timeout_s: float = field(default_factory=lambda: seconds_from_env(TIMEOUT_ENV, TIMEOUT_S))
    connect_timeout_s: float = field(default_factory=connect_timeout)
    _http: httpx.Client = field(init=False, repr=False)
    _access: str | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self._http = httpx.Client(timeout=self.timeout_s, follow_redirects=True)

    @cached_property
    def is_personal_token(self) -> bool:
        """Whether the key is a personal access token (a JWT refresh token), not a legacy token."""
        return _jwt_claims(self.api_key).get("token_type") == "refresh"

    def _authorization(self, fresh: bool = False) -> str:
        """The ``Authorization`` header: the legacy token, or an access token for a personal one."""
        if not self.is_personal_token:
            return f"Token {self.api_key}"
        if self._access is None or fresh:
            answer = self._http.post(f"{self.url}/api/token/refresh/", json={"refresh": self.api_key})
            if answer.status_code != 200:
                raise _HTTPStatus(answer.status_code, _json_or_none(answer))
            access = (_json_or_none(answer) or {}).get("access")
            if not isinstance(access, str):
                raise _HTTPStatus(401, {"detail": "no access token in the refresh answer"})
            self._access = access
        return f"Bearer {self._access}"

    def check_answers(self) -> None:
        """Ask ``GET /health`` once, within ``connect_timeout_s``: a server that accepts connections
        but does not answer is one sentence in seconds, not minutes of retried requests. A refused
        connection is retried as every call is (the server may be starting).

        Raises:
            IlotsError: the server did not answer, naming its URL and the setting to change.
        """

        def health() -> None:
            try:
                self._http.get(f"{self.url}/health", timeout=self.connect_timeout_s)
            except httpx.TimeoutException as exc:
                raise self._error(
                    f"the Label Studio server at {self.url} did not answer within "
                    f"{self.connect_timeout_s:g} s ({type(exc).__name__}): check that Label Studio runs "
                    f"there and answers, fix {URL_ENV}, or raise {CONNECT_TIMEOUT_ENV}."
                ) from None

        self.call(health, "check that it answers")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, fn: Callable[[], T], what: str, *, before_retry: Callable[[], None] | None = None) -> T:
        """Run one API call, retrying transient failures; ``what`` names it in errors.

        ``before_retry`` runs before each new try: a write whose answer was lost (a timeout, a
        dropped connection, a gateway error) may have been applied all the same, so writes use it
        to send again only what the server does not have yet.
        """
        reason = ""
        for attempt in range(self.tries):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.debug("retrying %s in %.1f s (%s)", what, delay, reason)
                time.sleep(delay)
            try:
                if attempt and before_retry is not None:
                    before_retry()
                return fn()
            except (httpx.TimeoutException, httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                reason = type(exc).__name__
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise self._error(
                    f"the Label Studio server at {self.url} did not answer ({type(exc).__name__}) "
                    f"while trying to {what}: check the URL and that the server is running."
                ) from None
            except IlotsError:
                raise
            except Exception as exc:
                status = getattr(exc, "status_code", None)
                if status in _RETRY_STATUSES:
                    reason = f"HTTP {status}"
                    continue
                raise self._api_error(exc, what) from None
        raise self._error(
            f"the Label Studio server at {self.url} did not answer after {self.tries} tries ({reason}, "
            f"{self.timeout_s:g} s each at most) while trying to {what}: start it (label-studio start), "
            f"check {URL_ENV}, or raise {TIMEOUT_ENV}."
        )

    def _api_error(self, exc: Exception, what: str) -> IlotsError:
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            return self._error(
                f"the Label Studio server at {self.url} rejected the API key (HTTP {status}) while trying "
                f"to {what}: set {KEY_ENV} to a valid access token from Account & Settings (a legacy "
                "token needs the server started with LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true)."
            )
        if status == 404:
            return self._error(
                f"the Label Studio server at {self.url} found nothing to {what} (HTTP 404): check the "
                "project id (labels.project_id or --project) and the URL."
            )
        body = getattr(exc, "body", None)
        detail = body.get("detail") or body.get("validation_errors") if isinstance(body, dict) else None
        text = f"HTTP {status}" if status is not None else type(exc).__name__
        if detail:
            text += f": {str(detail)[:300]}"
        return self._error(
            f"the Label Studio server at {self.url} refused to {what} ({text}): check the project "
            "and the server's log."
        )

    def _error(self, message: str) -> IlotsError:
        return IlotsError(message.replace(self.api_key, "***") if self.api_key else message)

    # ------------------------------------------------------------------ paginated helpers

    def iter_tasks(
        self, project_id: int, *, query: dict | None = None, fields: str = "all", page_size: int = PAGE_SIZE
    ) -> Iterator[dict]:
        """Every task of a project as a dict, one page in memory at a time."""
        page = 1
        while True:
            params: dict[str, Any] = {"project": project_id, "page": page, "page_size": page_size}
            if fields:
                params["fields"] = fields
            if query:
                params["query"] = json.dumps(query)
            answer = self.call(
                functools.partial(self.get, "/api/tasks/", params=params), f"list tasks (page {page})"
            )
            if answer is None:
                return
            tasks = answer.get("tasks", [])
            yield from tasks
            if len(tasks) < page_size or page * page_size >= int(answer.get("total", 0)):
                return
            page += 1

    def post_missing(
        self,
        path: str,
        items: list[dict],
        what: str,
        missing: Callable[[list[dict]], list[dict]],
        **kwargs: Any,
    ) -> None:
        """POST ``items`` (a JSON list) idempotently: a retry after a lost answer first asks
        ``missing(items)`` which of them the server still lacks, once its view has :func:`settled`,
        and sends only those."""
        pending = items

        def missing_only() -> None:
            nonlocal pending
            pending = settled(lambda: missing(pending))
            log.info("retrying to %s: %d of %d item(s) still missing", what, len(pending), len(items))

        def send() -> None:
            if pending:
                self.post(path, json=pending, **kwargs)

        self.call(send, what, before_retry=missing_only)

    def get(self, path: str, **kwargs: Any) -> Any:
        """A raw authenticated GET (JSON answer); 404 on a page past the end gives None."""
        return self._request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self._request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self._request("PATCH", path, **kwargs)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self._http.request(
            method, f"{self.url}{path}", headers={"Authorization": self._authorization()}, **kwargs
        )
        if answer.status_code == 401 and self.is_personal_token:  # the access token expired
            answer = self._http.request(
                method, f"{self.url}{path}", headers={"Authorization": self._authorization(fresh=True)},
                **kwargs,
            )  # fmt: skip
        if answer.status_code == 404 and method == "GET" and "page" in (kwargs.get("params") or {}):
            return None
        if answer.status_code >= 400:
            raise _HTTPStatus(answer.status_code, _json_or_none(answer))
        return _json_or_none(answer)


def settled(look: Callable[[], T], pause_s: float = 2.0, tries: int = 10) -> T:
    """What the server holds once it stopped changing: ``look()`` until two answers ``pause_s``
    apart agree. A write whose answer was lost may still be committing when its retry checks what
    is missing; checking too early would send it twice."""
    before = look()
    for _ in range(tries):
        time.sleep(pause_s)
        now = look()
        if now == before:
            return now
        before = now
    return before


class _HTTPStatus(Exception):
    """A non-2xx answer to a raw request (shaped like the SDK's ApiError)."""

    def __init__(self, status_code: int, body: Any) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.body = body


def _jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (signature not checked: the server checks it), or {} for another token."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return {}
    return claims if isinstance(claims, dict) else {}


def _json_or_none(answer: httpx.Response) -> Any:
    try:
        return answer.json()
    except ValueError:
        return None
