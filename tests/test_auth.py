"""Bearer tokens and principals (resume.auth): plain tokens, JWTs, claims, namespaces."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from resume.auth import EVERYONE, Authenticator, Principal, Unauthorized
from resume.errors import UsageError

SECRET = "s" * 40


def mint(
    key: Any = SECRET,
    *,
    sub: str = "alice",
    publish: list[str] | None = None,
    subscribe: list[str] | None = None,
    uploads: list[str] | None = None,
    expires_in: float = 600,
    algorithm: str = "HS256",
    **extra: Any,
) -> str:
    """A JWT the way docs/auth.md tells an issuer to make one."""
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time() + expires_in), **extra}
    channels = {k: v for k, v in (("publish", publish), ("subscribe", subscribe)) if v is not None}
    if channels:
        claims["channels"] = channels
    if uploads is not None:
        claims["uploads"] = uploads
    return jwt.encode(claims, key, algorithm=algorithm)


def hs256_by_hand(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWT made without PyJWT (which refuses a PEM key as an HMAC secret)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    signature = b64(hmac.new(secret, signing, hashlib.sha256).digest())
    return (signing + b"." + signature).decode()


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_claims_become_a_principal_with_glob_permissions() -> None:
    """channels.publish / channels.subscribe / uploads are fnmatch globs; missing grants nothing."""
    auth = Authenticator(jwt_secret=SECRET)
    token = mint(publish=["orders.*"], subscribe=["orders.*", "news"], uploads=["alice/*"])
    principal = auth.authenticate(bearer(token))
    assert principal.sub == "alice" and principal.expires is not None
    assert principal.may_publish("orders.eu") and not principal.may_publish("news")
    assert principal.may_subscribe("news") and not principal.may_subscribe("payments")
    assert principal.may_use_channel("news") and not principal.may_use_channel("payments")
    assert principal.may_upload("alice/x") and principal.may_upload("alice/deep/x")
    assert not principal.may_upload("bob/x") and not principal.may_upload("alice")
    bare = auth.authenticate(bearer(mint(sub="bob")))
    assert not bare.may_publish("orders.eu") and not bare.may_upload("bob/x")


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (mint(expires_in=-60), "token expired"),
        (mint("x" * 40), "bad signature"),  # forged: signed with another secret
        (mint() + "x", "invalid token"),
        (jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "exp"),  # exp is required
        (jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"), "sub"),
        (mint(channels=["orders"]), "'channels' must be an object"),
        (mint(uploads="alice/*"), "'uploads' must be a list"),
        (mint(sub="é" * 100), "longer than"),
        ("not.a.jwt", "invalid token"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token: str, reason: str) -> None:
    """Expired, forged, malformed tokens and bad claims are 401s that say why."""
    with pytest.raises(Unauthorized, match=reason):
        Authenticator(jwt_secret=SECRET).authenticate(bearer(token))


def test_plain_token_still_allows_everything_next_to_jwts() -> None:
    """--token keeps meaning "everything allowed"; a wrong one is refused."""
    auth = Authenticator(token="plain", jwt_secret=SECRET)
    assert auth.authenticate("Bearer plain") is EVERYONE
    assert EVERYONE.may_publish("anything") and EVERYONE.may_upload("any/name")
    assert EVERYONE.namespaced("shop-1") == "shop-1"
    with pytest.raises(Unauthorized, match="missing"):
        auth.authenticate(None)
    with pytest.raises(Unauthorized, match="invalid token"):
        auth.authenticate("Bearer wrong")
    with pytest.raises(Unauthorized, match="wrong token"):
        Authenticator(token="plain").authenticate("Bearer wrong")
    assert Authenticator().authenticate(None) is EVERYONE


def test_namespaced_ids_never_collide_between_principals() -> None:
    """quote(sub)/id: a sub containing '/' cannot reach into another principal's namespace."""
    a = Principal(sub="a/b").namespaced("c")
    b = Principal(sub="a").namespaced("b/c")
    assert a != b
    assert Principal(sub="alice").namespaced("shop-1") == "alice/shop-1"


def test_public_keys_select_their_algorithms_and_refuse_confusion(tmp_path: Path) -> None:
    """RS256 and ES256 tokens verify against their PEM key; an HS256 token 'signed' with the
    public key as a secret (algorithm confusion) is refused."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem)
    auth = Authenticator.from_files(jwt_public_key=path)
    good = mint(rsa_key, algorithm="RS256", publish=["orders.*"])
    assert auth.authenticate(bearer(good)).may_publish("orders.eu")
    forged = mint(rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256")
    with pytest.raises(Unauthorized, match="bad signature"):
        auth.authenticate(bearer(forged))
    confused = hs256_by_hand({"sub": "eve", "exp": int(time.time()) + 60}, secret=pem)
    with pytest.raises(Unauthorized, match="alg"):
        auth.authenticate(bearer(confused))

    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert (
        Authenticator(jwt_public_key=ec_pem)
        .authenticate(bearer(mint(ec_key, algorithm="ES256")))
        .sub
        == "alice"
    )


def test_bad_server_options_are_usage_errors(tmp_path: Path) -> None:
    """A short secret, an unreadable or non-PEM key file: clear errors at startup."""
    with pytest.raises(UsageError, match="at least 32 bytes"):
        Authenticator(jwt_secret="short")
    with pytest.raises(UsageError, match="cannot read"):
        Authenticator.from_files(jwt_public_key=tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(UsageError, match="not a PEM public key"):
        Authenticator.from_files(jwt_public_key=junk)
    with pytest.raises(UsageError, match="not both"):
        Authenticator(jwt_secret=SECRET, jwt_public_key=b"x")
