"""The pure auth parts: keys, JWT verification, scopes, token buckets, [auth] config."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rtis.auth import (
    ApiKey,
    Authenticator,
    JwtSettings,
    Principal,
    RateLimiter,
    TokenBucket,
    Unauthenticated,
    credential_from_headers,
    hash_key,
    load_jwks,
    new_key,
    origin_allowed,
    resolve_rate,
    scope_allows,
    scope_problem,
)
from rtis.config import config_from_dict
from rtis.errors import ConfigError

SECRET = "s" * 40


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], sign: bytes | None = None) -> str:
    """A token built by hand, as an attacker would (PyJWT refuses to make these)."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    sig = b"" if sign is None else hmac.new(sign, head.encode(), hashlib.sha256).digest()
    return head + "." + b64(sig)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 300, "scope": "publish:orders", **extra}


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_private() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwks_of(*keys: Any) -> dict[str, Any]:
    out = []
    for i, key in enumerate(keys):
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        else:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk["kid"] = f"k{i}"
        out.append(jwk)
    return {"keys": out}


@pytest.fixture
def jwks_file(
    tmp_path: Path, rsa_private: rsa.RSAPrivateKey, ec_private: ec.EllipticCurvePrivateKey
) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_of(rsa_private, ec_private)))
    return path


def authenticator(jwks: Path | None = None, **settings: Any) -> Authenticator:
    keys = load_jwks(jwks) if jwks is not None else ()
    secret = settings.pop("secret", SECRET.encode() if jwks is None else None)
    settings.setdefault("leeway", 0.0)
    return Authenticator(
        [ApiKey("ingest", hash_key("rtis_good"), ("publish:orders",))],
        JwtSettings(secret=secret, keys=keys, **settings),
    )


# -- API keys -----------------------------------------------------------------------


def test_a_new_key_is_random_prefixed_and_its_hash_is_sha256_hex() -> None:
    a, b = new_key(), new_key()
    assert a != b and a.startswith("rtis_") and len(a) >= 40
    assert hash_key(a) == "sha256:" + hashlib.sha256(a.encode()).hexdigest()


def test_a_configured_key_authenticates_with_its_scopes_and_a_wrong_one_does_not() -> None:
    auth = authenticator()
    principal = auth.authenticate("rtis_good")
    assert principal.id == "key:ingest" and principal.scopes == ("publish:orders",)
    assert principal.valid_until is None
    for wrong in ("rtis_bad", "rtis_goo", "rtis_good ", hash_key("rtis_good"), "x"):
        with pytest.raises(Unauthenticated) as e:
            auth.authenticate(wrong)
        assert wrong not in e.value.message


def test_keys_are_compared_with_compare_digest_on_every_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("rtis.auth.hmac.compare_digest", spy)
    keys = [ApiKey(f"k{i}", hash_key(f"rtis_{i}"), ("admin",)) for i in range(3)]
    auth = Authenticator(keys)
    assert auth.authenticate("rtis_0").id == "key:k0"
    assert len(calls) == 3  # no early exit on the first match
    assert all(a == hashlib.sha256(b"rtis_0").digest() for a, _ in calls)


def test_credentials_come_from_a_bearer_header_or_x_api_key() -> None:
    assert credential_from_headers({"Authorization": "Bearer abc"}) == "abc"
    assert credential_from_headers({"Authorization": "bearer  abc "}) == "abc"
    assert credential_from_headers({"X-API-Key": "abc"}) == "abc"
    assert credential_from_headers({}) is None
    with pytest.raises(Unauthenticated) as e:
        credential_from_headers({"Authorization": "Basic dXNlcjpzZWNyZXQ="})
    assert "dXNlcjpzZWNyZXQ" not in e.value.message


# -- scopes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "required", "allowed"),
    [
        (["publish:orders"], "publish:orders", True),
        (["publish:orders"], "publish:orders2", False),
        (["publish:orders"], "subscribe:orders", False),
        (["publish:*"], "publish:anything", True),
        (["read:sales_*"], "read:sales_per_minute", True),
        (["read:sales_*"], "read:orders", False),
        (["*:orders"], "subscribe:orders", True),
        (["*"], "admin", True),
        (["read:*"], "admin", False),
        (["admin"], "read:orders", False),
        ([], "read:orders", False),
    ],
)
def test_scope_patterns_match_fnmatch_style(
    granted: list[str], required: str, allowed: bool
) -> None:
    assert scope_allows(granted, required) is allowed


def test_scope_syntax_is_checked() -> None:
    for ok in ("admin", "*", "publish:orders", "read:*", "subscribe:sales_?", "*:orders"):
        assert scope_problem(ok) is None, ok
    for bad in ("publsh:orders", "publish:", "publish", "read:a b", "root", ""):
        assert scope_problem(bad) is not None, bad


# -- JWT --------------------------------------------------------------------------


def test_an_hs256_token_gives_its_subject_scopes_and_expiry() -> None:
    exp = int(time.time()) + 300
    token = jwt.encode(claims(exp=exp, scope="publish:orders read:*"), SECRET, "HS256")
    principal = authenticator().authenticate(token)
    assert principal.id == "jwt:alice"
    assert principal.scopes == ("publish:orders", "read:*")
    assert principal.valid_until == exp


def test_scopes_come_from_a_scopes_array_too() -> None:
    token = jwt.encode(claims(scope=None, scopes=["admin", "read:x"]), SECRET, "HS256")
    assert authenticator().authenticate(token).scopes == ("admin", "read:x")
    bad = jwt.encode(claims(scope=["admin"]), SECRET, "HS256")
    with pytest.raises(Unauthenticated, match="space-separated"):
        authenticator().authenticate(bad)


def test_rs256_and_es256_tokens_verify_against_the_jwks(
    jwks_file: Path, rsa_private: rsa.RSAPrivateKey, ec_private: ec.EllipticCurvePrivateKey
) -> None:
    auth = authenticator(jwks_file)
    rs = jwt.encode(claims(), rsa_private, "RS256", headers={"kid": "k0"})
    es = jwt.encode(claims(sub="bob"), ec_private, "ES256", headers={"kid": "k1"})
    assert auth.authenticate(rs).id == "jwt:alice"
    assert auth.authenticate(es).id == "jwt:bob"
    # Without a kid, the one key of the token's algorithm is used.
    assert auth.authenticate(jwt.encode(claims(), rsa_private, "RS256")).id == "jwt:alice"


def reject(auth: Authenticator, token: str, match: str) -> None:
    with pytest.raises(Unauthenticated, match=match) as e:
        auth.authenticate(token)
    assert token not in e.value.message
    assert SECRET not in e.value.message


def test_a_forged_signature_is_refused() -> None:
    forged = jwt.encode(claims(scope="admin"), "x" * 40, "HS256")
    reject(authenticator(), forged, "signature")
    # Tampered payload with the original signature.
    good = jwt.encode(claims(), SECRET, "HS256")
    head, _, sig = good.split(".")
    tampered = f"{head}.{b64(json.dumps(claims(scope='admin')).encode())}.{sig}"
    reject(authenticator(), tampered, "signature")


def test_an_expired_token_is_refused_and_exp_is_required() -> None:
    reject(
        authenticator(),
        jwt.encode(claims(exp=int(time.time()) - 5), SECRET, "HS256"),
        "expired",
    )
    no_exp = {k: v for k, v in claims().items() if k != "exp"}
    reject(authenticator(), jwt.encode(no_exp, SECRET, "HS256"), "'exp'")


def test_leeway_accepts_a_token_just_past_its_expiry() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 5), SECRET, "HS256")
    assert authenticator(leeway=60.0).authenticate(token).id == "jwt:alice"


def test_issuer_and_audience_are_checked_when_configured() -> None:
    auth = authenticator(issuer="https://idp.example", audience="rtis")
    ok = jwt.encode(claims(iss="https://idp.example", aud="rtis"), SECRET, "HS256")
    assert auth.authenticate(ok).id == "jwt:alice"
    reject(
        auth,
        jwt.encode(claims(iss="https://idp.example", aud="other"), SECRET, "HS256"),
        "audience",
    )
    reject(
        auth, jwt.encode(claims(iss="https://evil.example", aud="rtis"), SECRET, "HS256"), "issuer"
    )
    reject(auth, jwt.encode(claims(aud="rtis"), SECRET, "HS256"), "'iss'")
    reject(auth, jwt.encode(claims(iss="https://idp.example"), SECRET, "HS256"), "'aud'")
    # Not configured: not checked.
    assert authenticator().authenticate(
        jwt.encode(claims(iss="x", aud="y"), SECRET, "HS256")
    ).id == ("jwt:alice")


def test_alg_none_is_refused() -> None:
    for alg in ("none", "None", "NONE"):
        reject(authenticator(), forge({"alg": alg, "typ": "JWT"}, claims(scope="admin")), "alg")


def test_hs256_signed_with_the_rsa_public_key_is_refused(
    jwks_file: Path, rsa_private: rsa.RSAPrivateKey
) -> None:
    """HS/RS confusion: the attacker knows the public key and uses it as an HMAC secret."""
    pem = rsa_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = json.dumps(jwks_of(rsa_private)["keys"][0]).encode()
    for secret in (pem, jwk):
        token = forge({"alg": "HS256", "typ": "JWT", "kid": "k0"}, claims(scope="admin"), secret)
        reject(authenticator(jwks_file), token, "algorithm 'HS256' is not accepted")
        # With an HS256 secret configured as well, the token must verify with that secret.
        reject(authenticator(jwks_file, secret=SECRET.encode()), token, "signature")


def test_a_token_must_use_the_algorithm_of_its_key(
    jwks_file: Path, rsa_private: rsa.RSAPrivateKey
) -> None:
    auth = authenticator(jwks_file)
    # RS384 and PS256 are not pinned for RSA keys here.
    reject(auth, jwt.encode(claims(), rsa_private, "RS384", headers={"kid": "k0"}), "algorithm")
    reject(auth, jwt.encode(claims(), rsa_private, "PS256", headers={"kid": "k0"}), "algorithm")
    # ES256 header pointing at the RSA key's kid finds no ES256 key with it.
    forged = forge({"alg": "ES256", "kid": "k0"}, claims())
    reject(auth, forged, "kid")
    # An HS256 token when only RS/ES keys are configured.
    reject(auth, jwt.encode(claims(), SECRET, "HS256"), "not accepted")
    # RS256 when only a secret is configured.
    reject(authenticator(), jwt.encode(claims(), rsa_private, "RS256"), "not accepted")


def test_malformed_tokens_are_refused_without_echoing_them() -> None:
    for token in ("a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30", "eyJ!.e30.x", "...."):
        with pytest.raises(Unauthenticated) as e:
            authenticator().authenticate(token)
        assert token not in e.value.message


def test_a_token_without_a_subject_is_refused() -> None:
    no_sub = {k: v for k, v in claims().items() if k != "sub"}
    reject(authenticator(), jwt.encode(no_sub, SECRET, "HS256"), "'sub'")
    with_client = jwt.encode({**no_sub, "client_id": "svc"}, SECRET, "HS256")
    assert authenticator().authenticate(with_client).id == "jwt:svc"


def test_jwt_is_refused_when_only_keys_are_configured() -> None:
    auth = Authenticator([ApiKey("a", hash_key("rtis_a"), ("admin",))])
    with pytest.raises(Unauthenticated, match=r"no \[auth.jwt\]"):
        auth.authenticate(jwt.encode(claims(), SECRET, "HS256"))


# -- JWKS files -------------------------------------------------------------------


def test_a_jwks_with_a_symmetric_or_private_key_is_refused(
    tmp_path: Path, rsa_private: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": b64(SECRET.encode())}]}))
    with pytest.raises(ValueError, match="oct") as e:
        load_jwks(path)
    assert b64(SECRET.encode()) not in str(e.value)
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_private))
    path.write_text(json.dumps({"keys": [private]}))
    with pytest.raises(ValueError, match="private") as e:
        load_jwks(path)
    assert private["d"] not in str(e.value)
    path.write_text(json.dumps({"keys": [{**private, "d": None, "alg": "RS512"}]}))
    with pytest.raises(ValueError, match="RS256 only"):
        load_jwks(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="JWKS"):
        load_jwks(path)


# -- origins ----------------------------------------------------------------------


def test_origins_same_origin_listed_or_star() -> None:
    host = "rtis.example:8080"
    assert origin_allowed("http://rtis.example:8080", host, [])
    assert origin_allowed("https://RTIS.example:8080/", host, [])
    assert not origin_allowed("https://evil.example", host, [])
    assert not origin_allowed("null", host, [])
    assert origin_allowed("https://app.example", host, ["https://app.example"])
    assert not origin_allowed("https://app.example.evil", host, ["https://app.example"])
    assert origin_allowed("https://anything", host, ["*"])


# -- token buckets (fake clock) ---------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=4, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(4)] == [0.0] * 4
    assert bucket.take(1, 0.0) == pytest.approx(0.5)  # next token in 1/rate s
    assert bucket.take(1, 0.5) == 0.0
    assert bucket.take(3, 0.5) == pytest.approx(1.5)  # refused whole: takes nothing
    assert bucket.take(3, 2.0) == 0.0
    assert bucket.take(5, 100.0) == math.inf  # more than the burst never fits
    assert bucket.full_in(100.0) == 0.0


def test_the_limiter_keeps_one_bucket_per_principal_and_reports_headers() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    a = Principal("key:a", (), rate=1.0, burst=2)
    b = Principal("key:b", (), rate=1.0, burst=2)
    assert limiter.charge(a) is not None and limiter.charge(a).allowed  # type: ignore[union-attr]
    status = limiter.charge(a)
    assert status is not None and not status.allowed
    assert status.headers() == {
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "2",
        "Retry-After": "1",
    }
    assert limiter.charge(b).allowed  # type: ignore[union-attr]
    clock.now += 1
    assert limiter.charge(a).allowed  # type: ignore[union-attr]
    assert limiter.charge(Principal("key:free", ())) is None  # rate 0: unlimited


def test_the_limiter_forgets_full_buckets_when_it_has_too_many() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock, max_buckets=10)
    for i in range(10):
        limiter.charge(Principal(f"jwt:{i}", (), rate=1.0, burst=1))
    clock.now += 5
    limiter.charge(Principal("jwt:new", (), rate=1.0, burst=1))
    assert len(limiter) == 1


def test_rates_fall_back_to_the_auth_defaults() -> None:
    assert resolve_rate(None, None, 0.0, 0) == (0.0, 0)
    assert resolve_rate(None, None, 10.0, 0) == (10.0, 10)
    assert resolve_rate(None, None, 10.0, 50) == (10.0, 50)
    assert resolve_rate(5.0, None, 10.0, 50) == (5.0, 5)
    assert resolve_rate(0.5, None, 0.0, 0) == (0.5, 1)
    assert resolve_rate(0.0, 7, 10.0, 50) == (0.0, 0)


# -- [auth] config ----------------------------------------------------------------


def auth_config(auth: dict[str, Any]) -> Any:
    return config_from_dict({"streams": {"orders": {}}, "auth": auth})


def test_auth_config_builds_keys_and_jwt(jwks_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTIS_TEST_SECRET", SECRET)
    config = auth_config(
        {
            "rate": 10,
            "keys": {
                "ingest": {"hash": hash_key("rtis_a"), "scopes": ["publish:*"], "rate": 100},
                "reader": {"hash": hash_key("rtis_b"), "scopes": ["read:orders"]},
            },
            "jwt": {
                "secret_env": "RTIS_TEST_SECRET",
                "jwks_file": str(jwks_file),
                "audience": "rtis",
                "leeway": "5s",
            },
        }
    )
    keys = {k.name: k for k in config.auth.keys}
    assert (keys["ingest"].rate, keys["ingest"].burst) == (100.0, 100)
    assert (keys["reader"].rate, keys["reader"].burst) == (10.0, 10)
    assert config.auth.jwt.secret == SECRET.encode()
    assert config.auth.jwt.algorithms() == ["HS256", "ES256", "RS256"]
    assert config.auth.jwt.leeway == 5.0
    assert SECRET not in repr(config)


def test_auth_config_errors_name_the_key_path_and_never_the_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RTIS_SHORT", "tooshort-secret")
    raw_key = new_key()
    with pytest.raises(ConfigError) as e:
        auth_config(
            {
                "keys": {
                    "a": {"hash": raw_key, "scopes": ["publsh:orders"]},
                    "b": {"scopes": ["admin"], "colour": 1},
                    "c": {"hash": hash_key("x")},
                },
                "jwt": {"secret_env": "RTIS_SHORT", "jwks_file": str(tmp_path / "nope.json")},
            }
        )
    errors = e.value.errors
    assert any(m.startswith("auth.keys.a.hash: expected") for m in errors)
    assert any(m.startswith("auth.keys.a.scopes[0]: 'publsh:orders'") for m in errors)
    assert any(m.startswith("auth.keys.b.hash: required") for m in errors)
    assert any(m.startswith("auth.keys.b.colour: unknown key") for m in errors)
    assert any(m.startswith("auth.keys.c.scopes: required") for m in errors)
    assert any("auth.jwt.secret_env" in m and "at least 32" in m for m in errors)
    assert any(m.startswith("auth.jwt.jwks_file: cannot read") for m in errors)
    text = str(e.value)
    assert raw_key not in text and "tooshort-secret" not in text


def test_an_empty_auth_section_or_jwt_without_keys_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RTIS_UNSET", raising=False)
    with pytest.raises(ConfigError, match="at least one"):
        auth_config({})
    with pytest.raises(ConfigError, match=r"secret_env .* or jwks_file"):
        auth_config({"jwt": {"issuer": "x"}})
    with pytest.raises(ConfigError, match="RTIS_UNSET is not set"):
        auth_config({"jwt": {"secret_env": "RTIS_UNSET"}})


def test_duplicate_key_hashes_are_an_error() -> None:
    h = hash_key("rtis_same")
    with pytest.raises(ConfigError, match="same hash"):
        auth_config({"keys": {n: {"hash": h, "scopes": ["*"]} for n in ("a", "b")}})


def test_limits_are_settings() -> None:
    config = config_from_dict(
        {
            "streams": {"e": {}},
            "server": {"max_connections": 5, "max_subscriptions": 2, "max_frame_bytes": 1024},
        }
    )
    assert (config.server.max_connections, config.server.max_subscriptions) == (5, 2)
    assert config.server.max_frame_bytes == 1024
    with pytest.raises(ConfigError, match=r"server\.max_connections: must be at least 1"):
        config_from_dict({"streams": {"e": {}}, "server": {"max_connections": 0}})
