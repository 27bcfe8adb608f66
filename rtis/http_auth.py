"""The aiohttp side of auth: one middleware, CORS, and the per-route scope rules.

The decisions are made in ``auth.py`` (pure); this module only reads headers,
maps each route to the scope it needs, and writes headers back. With no
``[auth]`` configured, every route is open and only the browser ``Origin``
check and CORS apply.

Routes are matched by their canonical path. A route missing from ``RULES``
and ``OPEN`` needs ``admin``: a new route is closed until someone decides
who may use it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from aiohttp import web

from .auth import (
    Authenticator,
    Forbidden,
    Principal,
    RateLimited,
    RateLimiter,
    RateStatus,
    Unauthenticated,
    credential_from_headers,
    origin_allowed,
)
from .config import Config
from .errors import PayloadTooLarge

# aiohttp >= 3.14: typed request storage (a plain string key warns)
PRINCIPAL = web.RequestKey("principal", Principal)  # the authenticated client, if any
RATE = web.RequestKey("rate", RateStatus)  # the last charge, for the RateLimit-* headers

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Rule = Callable[[web.Request, Principal], None]

# Open to anyone: probes, and static files that hold no data.
OPEN = frozenset({"/health", "/ready", "/", "/rtis.js", "/favicon.ico", "/openapi.json"})
OPEN_PREFIXES = ("/static",)
CORS_ALLOW_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "content-type",
        "content-encoding",
        "last-event-id",
    }
)
CORS_EXPOSE_HEADERS = "Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
CORS_MAX_AGE = "600"


def _scope_of(action: str, key: str) -> Rule:
    def rule(request: web.Request, principal: Principal) -> None:
        principal.require(f"{action}:{request.match_info[key]}")

    return rule


def _authenticated(request: web.Request, principal: Principal) -> None:
    """Any valid credentials; the handler shows only what the principal may see."""


def _admin(request: web.Request, principal: Principal) -> None:
    principal.require("admin")


def _dead_letters(request: web.Request, principal: Principal) -> None:
    """admin sees every dead letter; otherwise read:<topic> for the stream= or
    query= asked for (a dead letter holds that topic's data)."""
    if principal.allows("admin"):
        return
    wanted = [request.query.get(k) for k in ("stream", "query") if request.query.get(k)]
    if not wanted:
        raise Forbidden(
            f"{principal.id} lacks the scope 'admin' needed to list every dead letter; "
            "ask for one with ?stream= or ?query= and a read scope for it"
        )
    for topic in wanted:
        principal.require(f"read:{topic}")


def _sse(request: web.Request, principal: Principal) -> None:
    for topic in request.query.getall("topic", []):
        principal.require(f"subscribe:{topic}")


RULES: dict[str, Rule] = {
    "/events/{stream}": _scope_of("publish", "stream"),
    "/api/topics": _authenticated,
    "/api/topics/{topic}/messages": _scope_of("read", "topic"),
    "/api/queries/{name}/rows": _scope_of("read", "name"),
    "/api/dead-letters": _dead_letters,
    "/sse": _sse,
    "/ws": _authenticated,  # subscribe scopes are checked per subscription in ws.py
}


class Guard:
    """Everything the middleware and ``/ws`` need to decide: built once per app."""

    def __init__(self, config: Config, limiter: RateLimiter | None = None) -> None:
        auth = config.auth
        self.auth = Authenticator(auth.keys, auth.jwt) if auth is not None else None
        self.ws_auth_timeout = auth.ws_auth_timeout if auth is not None else 0.0
        self.limiter = limiter or RateLimiter()
        self.allowed_origins = config.server.allowed_origins

    def origin_ok(self, request: web.Request) -> bool:
        """No Origin (not a browser) or an allowed one."""
        origin = request.headers.get("Origin")
        return origin is None or origin_allowed(origin, request.host, self.allowed_origins)

    def check_origin(self, request: web.Request) -> None:
        if not self.origin_ok(request):
            raise Forbidden(
                f"browser origin {request.headers['Origin'][:100]!r} is not allowed; "
                "list it in server.allowed_origins",
                code="origin_not_allowed",
            )

    def authenticate(self, request: web.Request) -> Principal | None:
        """The request's principal; None without credentials; 401 if they are wrong."""
        assert self.auth is not None
        credential = credential_from_headers(request.headers)
        if credential is None:
            return None
        return self.auth.authenticate(credential)

    def charge(self, request: web.Request, principal: Principal, cost: float) -> None:
        """Take ``cost`` from the principal's bucket or raise 429."""
        status = self.limiter.charge(principal, cost)
        if status is None:
            return
        request[RATE] = status
        if status.allowed:
            return
        raise RateLimited(
            f"{principal.id} is over its rate limit of {principal.rate:g} events/s "
            f"(burst {principal.burst}); retry in {math.ceil(status.retry_after)} s",
            retry_after=math.ceil(status.retry_after),
        )


GUARD = web.AppKey("guard", Guard)


def charge_events(request: web.Request, count: int) -> None:
    """Charge an ingest request for its events (the middleware already took 1)."""
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None or principal.rate <= 0:
        return
    if count > principal.burst:  # would never fit: waiting cannot help
        raise PayloadTooLarge(
            f"a batch of {count} events exceeds the burst of {principal.burst} events "
            f"allowed to {principal.id}; send smaller batches",
            code="batch_exceeds_burst",
        )
    if count > 1:
        request.app[GUARD].charge(request, principal, count - 1)


def may_see(request: web.Request, topic: str) -> bool:
    """Whether the request's principal may read or subscribe to ``topic`` (listings)."""
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None:
        return True
    return principal.allows(f"read:{topic}") or principal.allows(f"subscribe:{topic}")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Origin and CORS preflight first, then credentials, scope and rate limit."""
    guard = request.app[GUARD]
    headers = request.headers
    if (
        request.method == "OPTIONS"
        and "Origin" in headers
        and "Access-Control-Request-Method" in headers
    ):
        return _preflight(request, guard)
    guard.check_origin(request)
    if guard.auth is None:
        return await handler(request)
    resource = request.match_info.route.resource
    if resource is None:  # no such route (404/405): nothing to protect
        return await handler(request)
    path = resource.canonical
    if path in OPEN or path.startswith(OPEN_PREFIXES):
        return await handler(request)
    principal = guard.authenticate(request)
    if principal is None:
        if path == "/ws":  # may still authenticate with its first message
            return await handler(request)
        raise Unauthenticated(
            "this route needs credentials: 'Authorization: Bearer <key or token>' "
            "or 'X-API-Key: <key>'"
        )
    request[PRINCIPAL] = principal
    RULES.get(path, _admin)(request, principal)
    guard.charge(request, principal, 1)
    return await handler(request)


def _preflight(request: web.Request, guard: Guard) -> web.StreamResponse:
    guard.check_origin(request)
    asked = request.headers.get("Access-Control-Request-Headers", "")
    names = [h.strip().lower() for h in asked.split(",") if h.strip()]
    refused = [h for h in names if h not in CORS_ALLOW_HEADERS and not h.startswith("ce-")]
    if refused:
        raise Forbidden(
            f"header {refused[0][:60]!r} is not allowed in cross-origin requests",
            code="cors_header_not_allowed",
        )
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": ", ".join(names) or "content-type",
            "Access-Control-Max-Age": CORS_MAX_AGE,
        },
    )


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """CORS headers for allowed browser origins, RateLimit-* and WWW-Authenticate."""
    origin = request.headers.get("Origin")
    if origin is not None and request.app[GUARD].origin_ok(request):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
        vary = response.headers.get("Vary")
        response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
    status: RateStatus | None = request.get(RATE)
    if status is not None:
        response.headers.update(status.headers())
    if response.status == 401:
        response.headers.setdefault("WWW-Authenticate", 'Bearer realm="rtis"')


def install(app: web.Application, config: Config) -> None:
    """Put the guard, its middleware and its response hook on ``app``."""
    app[GUARD] = Guard(config)
    app.middlewares.append(auth_middleware)
    app.on_response_prepare.append(on_response_prepare)


__all__ = ["GUARD", "PRINCIPAL", "Guard", "auth_middleware", "charge_events", "install", "may_see"]
