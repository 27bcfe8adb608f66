"""Who a client is and what it may do: API keys, JWT bearer tokens, scopes, rate limits.

Everything here is plain Python with no sockets and no aiohttp, so tests drive
it with strings and a fake clock; ``http_auth.py`` and ``ws.py`` are the thin
aiohttp glue. This module owns:

- API keys: ``new_key`` makes one, ``hash_key`` gives the ``sha256:<hex>`` form
  kept in config; a presented key is hashed and compared with every configured
  hash using ``hmac.compare_digest`` (no early exit, no lookup by value).
- JWT verification (PyJWT) as an OAuth2 resource server does it: the algorithm
  is pinned by the kind of key that verifies it (HS256 only with the secret,
  RS256 only with RSA keys, ES256 only with EC P-256 keys of the JWKS), so
  ``none`` and HS/RS confusion are refused before any signature is checked.
- Scopes: ``publish:<stream>``, ``subscribe:<topic>``, ``read:<topic>``,
  ``admin`` and ``*``, granted as fnmatch-style patterns.
- Token buckets (events per second, burst) per key or token subject.

No message built here contains a key, a token or a secret: errors name the
key by its configured name and the token by its subject at most.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import jwt

from .errors import RtisError

KEY_PREFIX = "rtis_"
HASH_PREFIX = "sha256:"
HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
SCOPE_ACTIONS = ("publish", "subscribe", "read")
SCOPE_RE = re.compile(r"^(publish|subscribe|read|\*):[A-Za-z0-9_*?\[\]!-]+$")
MIN_SECRET_BYTES = 32
# The one algorithm each kind of key verifies; a token naming another is refused.
HMAC_ALGORITHM = "HS256"
JWKS_ALGORITHMS = {"RSA": "RS256", "EC": "ES256"}


class Unauthenticated(RtisError, PermissionError):
    """No credentials, or credentials that do not verify (HTTP 401, close 4401)."""

    status = 401
    code = "unauthenticated"


class Forbidden(RtisError, PermissionError):
    """Valid credentials without the scope needed (HTTP 403, close 4403)."""

    status = 403
    code = "forbidden"


class RateLimited(RtisError):
    """The key or subject has used up its token bucket (HTTP 429, close 4429)."""

    status = 429
    code = "rate_limited"


# -- API keys -------------------------------------------------------------------


def new_key() -> str:
    """A new random API key: ``rtis_`` and 43 URL-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The form kept in config. Keys are 256 random bits, so one SHA-256 suffices:
    there is nothing for a slow password hash to protect against."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


# -- scopes ---------------------------------------------------------------------


def scope_problem(scope: object) -> str | None:
    """Why ``scope`` is not a valid granted scope pattern, or None if it is."""
    if not isinstance(scope, str):
        return f"a scope must be a string, got {type(scope).__name__}"
    if scope in ("admin", "*") or SCOPE_RE.match(scope):
        return None
    return (
        f"{scope!r} is not a scope; use admin, *, or publish:/subscribe:/read: followed "
        "by a stream or topic name or a pattern such as publish:* or read:orders_*"
    )


def scope_allows(granted: Iterable[str], required: str) -> bool:
    """Whether any granted pattern matches ``required`` (``*`` matches everything)."""
    return any(fnmatchcase(required, pattern) for pattern in granted)


def scopes_from_claims(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """Scopes of a token: ``scope`` (space-separated, RFC 8693) and/or ``scopes`` (array)."""
    out: list[str] = []
    scope = claims.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise Unauthenticated("the token's 'scope' claim must be a space-separated string")
        out.extend(scope.split())
    many = claims.get("scopes")
    if many is not None:
        if not isinstance(many, list) or not all(isinstance(s, str) for s in many):
            raise Unauthenticated("the token's 'scopes' claim must be an array of strings")
        out.extend(many)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Principal:
    """An authenticated client: a key or a token subject, and what it may do."""

    id: str  # "key:NAME" or "jwt:SUBJECT"; names the rate-limit bucket, safe to log
    scopes: tuple[str, ...]
    rate: float = 0.0  # events per second; 0 = unlimited
    burst: int = 0
    valid_until: float | None = None  # epoch seconds (token exp + leeway); None = no expiry

    def allows(self, scope: str) -> bool:
        return scope_allows(self.scopes, scope)

    def require(self, scope: str) -> None:
        if not self.allows(scope):
            raise Forbidden(f"{self.id} lacks the scope {scope!r}")


# -- configuration of the pure parts ----------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    name: str
    hash: str  # "sha256:<hex>"
    scopes: tuple[str, ...]
    rate: float = 0.0
    burst: int = 0

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.hash[len(HASH_PREFIX) :])


@dataclass(frozen=True)
class JwtSettings:
    """What verifies tokens. ``secret`` and ``keys`` never appear in a repr."""

    secret: bytes | None = field(default=None, repr=False)
    keys: tuple[jwt.PyJWK, ...] = field(default=(), repr=False)
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    rate: float = 0.0
    burst: int = 0

    def algorithms(self) -> list[str]:
        algs = [HMAC_ALGORITHM] if self.secret is not None else []
        algs += sorted({k.algorithm_name for k in self.keys})
        return algs


def load_jwks(path: Path) -> tuple[jwt.PyJWK, ...]:
    """Read a JWKS file of RSA and EC P-256 *public* keys; ValueError says what is wrong.

    Symmetric (``oct``) keys are refused: an HMAC secret in a JWKS would let
    HS256 tokens be verified with it, which is how HS/RS confusion starts."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e.msg} at line {e.lineno}") from None
    raw = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw:
        raise ValueError(f'{path}: expected a JWKS object {{"keys": [...]}} with at least one key')
    keys: list[jwt.PyJWK] = []
    kids: set[str] = set()
    for i, jwk in enumerate(raw):
        where = f"{path}: keys[{i}]"
        if not isinstance(jwk, dict):
            raise ValueError(f"{where}: expected an object")
        kty = jwk.get("kty")
        alg = JWKS_ALGORITHMS.get(kty) if isinstance(kty, str) else None
        if alg is None:
            raise ValueError(
                f"{where}: kty {kty!r} is not accepted; a JWKS here holds RSA (RS256) "
                "and EC P-256 (ES256) public keys; an HMAC secret goes in secret_env"
            )
        if kty == "EC" and jwk.get("crv") != "P-256":
            raise ValueError(f"{where}: EC keys must use crv P-256 (ES256)")
        if jwk.get("alg") not in (None, alg):
            raise ValueError(f"{where}: a {kty} key verifies {alg} only, not {jwk.get('alg')!r}")
        if "d" in jwk:
            raise ValueError(f"{where}: holds a private key; keep only the public part here")
        kid = jwk.get("kid")
        if kid is not None:
            if not isinstance(kid, str) or kid in kids:
                raise ValueError(f"{where}: 'kid' must be a string unique in the file")
            kids.add(kid)
        try:
            keys.append(jwt.PyJWK(jwk, algorithm=alg))
        except jwt.PyJWTError:
            # PyJWT's message quotes the whole key; say which one instead.
            raise ValueError(f"{where}: not a valid {kty} public key") from None
    return tuple(keys)


# -- verification -----------------------------------------------------------------


_JWT_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "the token's audience is not accepted here"),
    (jwt.InvalidIssuerError, "the token's issuer is not accepted here"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted here"),
    (jwt.InvalidIssuedAtError, "the token's 'iat' claim is not a number"),
)


class Authenticator:
    """Turns a presented credential (API key or JWT) into a :class:`Principal`."""

    def __init__(self, keys: Sequence[ApiKey], jwt_settings: JwtSettings | None = None) -> None:
        self._keys = [(k.digest, k) for k in keys]
        self.jwt = jwt_settings

    def authenticate(self, credential: str) -> Principal:
        """The principal for ``credential``; Unauthenticated if it does not verify."""
        if not credential:
            raise Unauthenticated("empty credentials")
        key = self._match_key(credential)
        if key is not None:
            return Principal(f"key:{key.name}", key.scopes, key.rate, key.burst)
        if credential.count(".") == 2 and not credential.startswith(KEY_PREFIX):
            if self.jwt is None:
                raise Unauthenticated("bearer tokens are not accepted: no [auth.jwt] is configured")
            return self._verify_jwt(credential, self.jwt)
        raise Unauthenticated("the API key is not valid")

    def _match_key(self, credential: str) -> ApiKey | None:
        digest = hashlib.sha256(credential.encode("utf-8", "surrogatepass")).digest()
        found = None
        for stored, key in self._keys:  # every hash is compared: timing says nothing
            if hmac.compare_digest(digest, stored):
                found = key
        return found

    def _verify_jwt(self, token: str, settings: JwtSettings) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the token is malformed") from None
        alg = header.get("alg")
        accepted = ", ".join(settings.algorithms())
        key: Any
        if alg == HMAC_ALGORITHM and settings.secret is not None:
            key = settings.secret
        elif isinstance(alg, str) and alg in JWKS_ALGORITHMS.values() and settings.keys:
            key = self._pick_key(header.get("kid"), alg, settings.keys)
        else:
            shown = alg if isinstance(alg, str) and len(alg) <= 16 else "?"
            raise Unauthenticated(
                f"the token's algorithm {shown!r} is not accepted; accepted: {accepted}"
            )
        required = ["exp"]
        if settings.issuer is not None:
            required.append("iss")
        if settings.audience is not None:
            required.append("aud")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=settings.issuer,
                audience=settings.audience,
                leeway=settings.leeway,
                options={"require": required, "verify_aud": settings.audience is not None},
            )
        except jwt.MissingRequiredClaimError as e:
            raise Unauthenticated(f"the token lacks the required {e.claim!r} claim") from None
        except jwt.PyJWTError as e:
            for cls, message in _JWT_ERRORS:
                if isinstance(e, cls):
                    raise Unauthenticated(message) from None
            raise Unauthenticated("the token is malformed") from None
        subject = next(
            (claims[c] for c in ("sub", "client_id", "azp") if isinstance(claims.get(c), str)),
            None,
        )
        if not subject:
            raise Unauthenticated("the token has no 'sub' claim")
        exp = claims["exp"]
        if not isinstance(exp, int | float) or isinstance(exp, bool):  # pragma: no cover
            raise Unauthenticated("the token's 'exp' claim is not a number")
        return Principal(
            f"jwt:{subject[:200]}",
            scopes_from_claims(claims),
            settings.rate,
            settings.burst,
            valid_until=float(exp) + settings.leeway,
        )

    @staticmethod
    def _pick_key(kid: object, alg: str, keys: Sequence[jwt.PyJWK]) -> Any:
        candidates = [k for k in keys if k.algorithm_name == alg]
        if kid is not None:
            candidates = [k for k in candidates if k.key_id == kid]
            if not candidates:
                raise Unauthenticated(f"no {alg} key in the JWKS has the token's 'kid'")
        elif len(candidates) != 1:
            raise Unauthenticated(
                f"the token has no 'kid' and the JWKS holds {len(candidates)} {alg} keys"
            )
        return candidates[0].key


def resolve_rate(
    rate: float | None, burst: int | None, default_rate: float, default_burst: int
) -> tuple[float, int]:
    """A key's own rate and burst, else ``[auth]``'s; a burst left at 0 is one
    second's worth of events (at least 1). Rate 0 means unlimited."""
    if rate is None:
        rate, burst = default_rate, default_burst if burst is None else burst
    if rate <= 0:
        return 0.0, 0
    return float(rate), burst or max(1, math.ceil(rate))


def credential_from_headers(headers: Mapping[str, str]) -> str | None:
    """The credential of a request: ``Authorization: Bearer X`` or ``X-API-Key: X``."""
    auth = headers.get("Authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthenticated("the Authorization header must be 'Bearer <key or token>'")
        return value.strip()
    key = headers.get("X-API-Key")
    if key is not None:
        return key.strip()
    return None


# -- browsers -----------------------------------------------------------------------


def origin_allowed(origin: str, host: str | None, allowed: Iterable[str]) -> bool:
    """Whether a browser page at ``origin`` may use this server at ``host``.

    Same origin (the Origin's host:port is the request's Host) is always
    allowed; otherwise the Origin must be listed exactly (scheme, host and
    port, case-insensitive), or ``allowed`` holds ``*``."""
    origin = origin.strip().rstrip("/").lower()
    for entry in allowed:
        entry = entry.strip().rstrip("/").lower()
        if entry == "*" or entry == origin:
            return True
    if host is None or origin == "null":
        return False
    _, sep, netloc = origin.partition("://")
    return bool(sep) and netloc == host.strip().lower()


# -- rate limits ------------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def take(self, cost: float, now: float) -> float:
        """Take ``cost`` tokens and return 0, or take none and return the seconds
        until they would be there (``inf`` if ``cost`` exceeds the burst)."""
        self._refill(now)
        if cost <= self.tokens:
            self.tokens -= cost
            return 0.0
        if cost > self.burst:
            return math.inf
        return (cost - self.tokens) / self.rate

    def full_in(self, now: float) -> float:
        """Seconds until the bucket is full again."""
        self._refill(now)
        return (self.burst - self.tokens) / self.rate


@dataclass(frozen=True)
class RateStatus:
    """The outcome of one charge, enough for ``Retry-After`` and ``RateLimit-*``."""

    limit: int
    remaining: int
    reset: float  # seconds until the bucket is full
    retry_after: float  # 0 when allowed; inf when the cost exceeds the burst

    @property
    def allowed(self) -> bool:
        return self.retry_after == 0.0

    def headers(self) -> dict[str, str]:
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset)),
        }
        if not self.allowed and math.isfinite(self.retry_after):
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return out


class RateLimiter:
    """One token bucket per principal id; unlimited principals (rate 0) cost nothing."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000
    ) -> None:
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: dict[str, TokenBucket] = {}

    def charge(self, principal: Principal, cost: float = 1.0) -> RateStatus | None:
        """Charge ``cost`` events to ``principal``; None when it has no rate limit."""
        if principal.rate <= 0:
            return None
        now = self.clock()
        bucket = self._buckets.get(principal.id)
        if bucket is None or bucket.rate != principal.rate or bucket.burst != principal.burst:
            if len(self._buckets) >= self.max_buckets:
                self._prune(now)
            bucket = self._buckets[principal.id] = TokenBucket(principal.rate, principal.burst, now)
        wait = bucket.take(cost, now)
        return RateStatus(principal.burst, int(bucket.tokens), bucket.full_in(now), wait)

    def _prune(self, now: float) -> None:
        """Forget full buckets (a full bucket is the same as a new one)."""
        for pid in [p for p, b in self._buckets.items() if b.full_in(now) <= 0]:
            del self._buckets[pid]
        if len(self._buckets) >= self.max_buckets:  # all busy: forget the oldest
            for pid in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[pid]

    def __len__(self) -> int:
        return len(self._buckets)
