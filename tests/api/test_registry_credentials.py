"""Registry credentials through the API: stored sealed, never answered."""

from __future__ import annotations

from sqlalchemy import select

from fleetlift.registries.models import RegistryCredential

from .conftest import Api

SECRET = "pa55-w0rd-that-must-not-leak"


def test_store_list_and_forget(api: Api) -> None:
    stored = api.put(
        "/registries/registry.example.com:5000/credentials", json={"username": "ci", "password": SECRET}
    )
    assert stored.status_code == 200, stored.text
    assert stored.json()["registry"] == "registry.example.com:5000" and stored.json()["username"] == "ci"
    assert SECRET not in stored.text
    listed = api.get("/registries")
    assert [r["registry"] for r in listed.json()] == [
        "registry.example.com:5000"
    ] and SECRET not in listed.text
    audit = api.get("/audit", params={"resource_type": "registry"})
    assert audit.json()["items"][0]["action"] == "registries.credentials.put" and SECRET not in audit.text
    with api.client.app.state.sessions() as session:  # type: ignore[attr-defined]
        row = session.scalars(
            select(RegistryCredential).where(RegistryCredential.tenant_id == api.tenant)
        ).one()
    assert SECRET not in row.sealed_password
    assert (
        api.put(
            "/registries/registry.example.com:5000/credentials", json={"username": "ci2", "password": "new"}
        ).json()["username"]
        == "ci2"
    )
    assert api.delete("/registries/registry.example.com:5000/credentials").status_code == 204
    assert api.delete("/registries/registry.example.com:5000/credentials").status_code == 404
    assert api.get("/registries").json() == []


def test_only_admins_manage_credentials(api: Api) -> None:
    for role in ("developer", "operator", "viewer"):
        response = api.call(
            "PUT", "/registries/r.example/credentials", role=role, json={"username": "u", "password": "p"}
        )
        assert response.status_code == 403
        assert api.call("GET", "/registries", role=role).status_code == 403


def test_bad_input(api: Api) -> None:
    assert (
        api.put("/registries/bad host/credentials", json={"username": "u", "password": "p"}).status_code
        == 400
    )
    assert api.put("/registries/r.example/credentials", json={"username": "u"}).status_code == 400
