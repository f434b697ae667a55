"""The processors' web app: Faust's web server serving only the pages a processor declares, every
answer with the security headers, and who signed in to a request."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import faust
from aiohttp import web as aiohttp_web
from faust.web.drivers.aiohttp import Web as FaustAiohttpWeb
from mode.utils.objects import cached_property

from orderops.http.auth import User

log = logging.getLogger("orderops.http")

_USER = "orderops.user"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


def signed_in(request: Any) -> User:
    """The user a ``Service.requires`` view was called by."""
    user: User = request[_USER]
    return user


def signs_in(request: Any, user: User) -> None:
    """``user`` is who called this request (``signed_in`` tells the view)."""
    request[_USER] = user


@aiohttp_web.middleware
async def hardened(request: aiohttp_web.Request, handler: Callable[..., Any]) -> aiohttp_web.StreamResponse:
    """Every answer carries the security headers (a page may set a stricter or wider CSP of its
    own); an unexpected error answers 500 with an id to find it in the log, never a stack trace."""
    try:
        response = await handler(request)
    except aiohttp_web.HTTPException as exc:  # 404, 405, 413 (body over ORDEROPS_HTTP_MAX_BODY_BYTES)...
        for name, value in SECURITY_HEADERS.items():
            exc.headers.setdefault(name, value)
        raise
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("HTTP %s %s failed (incident %s): a bug, not the caller's fault; the caller got 500",
                      request.method, request.path, incident)
        response = aiohttp_web.json_response({"error": f"internal error (incident {incident}, in the log)"},
                                             status=500)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response  # type: ignore[no-any-return]  # the handler's, a StreamResponse


class PagesOfOurOwn(FaustAiohttpWeb):
    """Faust's aiohttp web server serving only the pages a processor declares: none of Faust's
    built-in ones, not even its index at ``/`` (a static ``{"status": "OK"}``, which took the
    timeline's console path). The rest of Faust's pages are off by their settings (``_faust_app``)."""

    production_blueprints = ()


class EngineApp(faust.App):
    """Faust's app with ``PagesOfOurOwn`` as its web server."""

    @cached_property
    def web(self) -> PagesOfOurOwn:
        return PagesOfOurOwn(self)
