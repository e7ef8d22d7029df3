"""The permission matrix, role mapping and the embedded issuer."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest

from fleetlift.auth import ROLE_PERMISSIONS, LocalIssuer, Permission, Role, TokenVerifier, permissions_for
from fleetlift.auth.rules import roles_from_claim
from fleetlift.errors import Unauthenticated

P = Permission


def test_matrix() -> None:
    assert ROLE_PERMISSIONS[Role.ADMIN] == frozenset(Permission)
    assert ROLE_PERMISSIONS[Role.VIEWER] == {
        P.DEVICES_READ,
        P.RELEASES_READ,
        P.DEPLOYMENTS_READ,
        P.EVENTS_READ,
    }
    assert ROLE_PERMISSIONS[Role.DEVELOPER] - ROLE_PERMISSIONS[Role.VIEWER] == {
        P.RELEASES_WRITE,
        P.DEPLOYMENTS_WRITE,
    }
    assert ROLE_PERMISSIONS[Role.OPERATOR] - ROLE_PERMISSIONS[Role.VIEWER] == {
        P.DEVICES_WRITE,
        P.DEVICES_ADMIT,
        P.DEPLOYMENTS_CONTROL,
        P.UPDATES_TRIGGER,
        P.AUDIT_READ,
    }
    assert (
        permissions_for([Role.DEVELOPER, Role.OPERATOR])
        == ROLE_PERMISSIONS[Role.DEVELOPER] | ROLE_PERMISSIONS[Role.OPERATOR]
    )
    assert permissions_for([]) == frozenset()


@pytest.mark.parametrize(
    ("claim", "role_map", "expected"),
    [
        (["admin"], {}, {Role.ADMIN}),
        (
            ["Fleet.Admin", "Fleet.Viewer"],
            {"Fleet.Admin": "admin", "Fleet.Viewer": "viewer"},
            {Role.ADMIN, Role.VIEWER},
        ),
        (["Fleet.Admin"], {}, set()),
        ("operator viewer", {}, {Role.OPERATOR, Role.VIEWER}),
        (["root", 7, None], {"root": "superuser"}, set()),
        (None, {}, set()),
        ({"admin": True}, {}, set()),
    ],
)
def test_roles_from_claim(claim: object, role_map: dict[str, str], expected: set[Role]) -> None:
    assert roles_from_claim(claim, role_map) == expected


@pytest.fixture
def issuer(tmp_path: Path) -> LocalIssuer:
    return LocalIssuer(tmp_path / "keys" / "local.pem", max_ttl=timedelta(hours=2))


def _header(token: str) -> dict[str, str]:
    return jwt.get_unverified_header(token)


def test_issue_and_verify(issuer: LocalIssuer) -> None:
    token = issuer.issue("alice", [Role.OPERATOR], timedelta(minutes=5), tenant_id="acme")
    principal = TokenVerifier([], local_issuer=issuer).verify(token)
    assert (
        principal.subject == "alice" and principal.roles == {Role.OPERATOR} and principal.tenant_id == "acme"
    )
    assert principal.issuer == "fleetlift-local" and principal.token_id
    assert _header(token) == {"alg": "ES256", "kid": issuer.kid, "typ": "JWT"}


def test_kid_is_the_rfc7638_thumbprint(issuer: LocalIssuer) -> None:
    import hashlib

    jwk = issuer.jwks()["keys"][0]
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    assert jwk["kid"] == expected == issuer.kid


def test_key_file_is_private_and_reused(issuer: LocalIssuer, tmp_path: Path) -> None:
    path = tmp_path / "keys" / "local.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = LocalIssuer(path)
    assert again.kid == issuer.kid


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1), timedelta(hours=3)])
def test_ttl_bounds(issuer: LocalIssuer, ttl: timedelta) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        issuer.issue("alice", [Role.ADMIN], ttl)


def test_rotation_keeps_issued_tokens_valid(issuer: LocalIssuer) -> None:
    old_token = issuer.issue("alice", [Role.ADMIN], timedelta(minutes=5))
    old_kid = issuer.kid
    new_kid = issuer.rotate()
    assert new_kid != old_kid
    verifier = TokenVerifier([], local_issuer=issuer)
    assert verifier.verify(old_token).subject == "alice"
    assert verifier.verify(issuer.issue("bob", [Role.ADMIN], timedelta(minutes=5))).subject == "bob"
    assert [k["kid"] for k in issuer.jwks()["keys"]] == [new_kid, old_kid]
    issuer.rotate()
    issuer.rotate()  # the oldest key falls out after two more rotations
    with pytest.raises(Unauthenticated):
        verifier.verify(old_token)


def test_expired_and_not_yet_valid(issuer: LocalIssuer) -> None:
    verifier = TokenVerifier([], local_issuer=issuer)
    past = datetime.now(UTC) - timedelta(hours=2)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(issuer.issue("a", [Role.ADMIN], timedelta(minutes=30), now=past))
    future = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(Unauthenticated, match="invalid"):
        verifier.verify(issuer.issue("a", [Role.ADMIN], timedelta(minutes=30), now=future))


def test_disabled_local_issuer_is_untrusted(issuer: LocalIssuer) -> None:
    with pytest.raises(Unauthenticated):
        TokenVerifier([]).verify(issuer.issue("a", [Role.ADMIN], timedelta(minutes=5)))


def test_another_instances_key_is_refused(issuer: LocalIssuer, tmp_path: Path) -> None:
    stranger = LocalIssuer(tmp_path / "other.pem")
    with pytest.raises(Unauthenticated):
        TokenVerifier([], local_issuer=issuer).verify(
            stranger.issue("mallory", [Role.ADMIN], timedelta(minutes=5))
        )
