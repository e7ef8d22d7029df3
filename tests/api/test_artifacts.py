"""Artifacts through the HTTP API: streaming upload with hashing and dedup, range downloads,
signed links, and deletion that never orphans a release."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from fleetlift.app import create_app, local_issuer
from fleetlift.auth import Role
from fleetlift.config import Settings

from .conftest import Api

OCTETS = {"Content-Type": "application/octet-stream"}


def upload(api: Api, content: bytes | Iterator[bytes], **params: object) -> object:
    query = {"name": "fw.bin", "version": "1"} | params
    return api.post("/artifacts", params=query, content=content, headers=OCTETS)


def test_upload_hashes_and_describes_the_file(api: Api) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)
    response = upload(api, content, kind="firmware", device_type=["gw-x1", "gw-x2"], filename="gw-fw.bin")
    assert response.status_code == 201, response.text  # type: ignore[attr-defined]
    artifact = response.json()  # type: ignore[attr-defined]
    assert artifact["sha256"] == hashlib.sha256(content).hexdigest()
    assert artifact["size"] == len(content)
    assert artifact["kind"] == "firmware" and artifact["filename"] == "gw-fw.bin"
    assert artifact["device_types"] == ["gw-x1", "gw-x2"] and artifact["uploaded_by"] == "admin-user"
    assert api.get(f"/artifacts/{artifact['id']}").json() == artifact
    assert [a["id"] for a in api.get("/artifacts", params={"kind": "firmware"}).json()["items"]] == [
        artifact["id"]
    ]


def test_streamed_upload_in_chunks(api: Api) -> None:
    pieces = [os.urandom(256 * 1024) for _ in range(12)]

    def chunks() -> Iterator[bytes]:
        yield from pieces

    artifact = upload(api, chunks()).json()  # type: ignore[attr-defined]
    assert artifact["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
    downloaded = api.get(f"/artifacts/{artifact['id']}/download")
    assert downloaded.content == b"".join(pieces)


def test_expected_hash_mismatch_keeps_nothing(api: Api, backend_client: object) -> None:
    content = b"corrupted on the way"
    response = upload(api, content, sha256="0" * 64)
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert "nothing was stored" in response.json()["detail"]  # type: ignore[attr-defined]
    assert api.get("/artifacts").json()["items"] == []
    good = upload(api, content, sha256=hashlib.sha256(content).hexdigest())
    assert good.status_code == 201  # type: ignore[attr-defined]


def test_same_content_is_stored_once(api: Api) -> None:
    content = os.urandom(100_000)
    first = upload(api, content, name="a.bin").json()  # type: ignore[attr-defined]
    again = upload(api, content, name="a.bin")
    assert again.status_code == 200 and again.json()["id"] == first["id"]  # type: ignore[attr-defined]
    other_name = upload(api, content, name="b.bin").json()  # type: ignore[attr-defined]
    assert other_name["id"] != first["id"] and other_name["sha256"] == first["sha256"]
    clash = upload(api, b"different bytes", name="a.bin")
    assert clash.status_code == 409  # type: ignore[attr-defined]
    root = Path(api.client.app.state.settings.artifact_root) / api.tenant  # type: ignore[attr-defined]
    assert len(list(root.iterdir())) == 1  # one copy of the content on disk
    assert api.delete(f"/artifacts/{first['id']}").status_code == 204
    assert len(list(root.iterdir())) == 1  # still used by b.bin
    assert api.get(f"/artifacts/{other_name['id']}/download").content == content
    assert api.delete(f"/artifacts/{other_name['id']}").status_code == 204
    assert list(root.iterdir()) == []


def test_bad_uploads(api: Api) -> None:
    assert upload(api, b"").status_code == 400  # type: ignore[attr-defined]
    traversal = upload(api, b"x", name="../../etc/passwd")
    assert traversal.status_code == 400  # type: ignore[attr-defined]
    assert "safe file name" in traversal.json()["detail"]  # type: ignore[attr-defined]
    assert upload(api, b"x", filename="..").status_code == 400  # type: ignore[attr-defined]
    as_json = api.post("/artifacts", params={"name": "a", "version": "1"}, json={"a": 1})
    assert as_json.status_code == 415
    assert upload(api, b"x", kind="spaceship").status_code == 400  # type: ignore[attr-defined]
    assert api.get("/artifacts").json()["items"] == []


def test_range_requests_resume_a_download(api: Api) -> None:
    content = os.urandom(2 * 1024 * 1024 + 5)
    artifact = api.artifact(content)
    path = f"/artifacts/{artifact['id']}/download"
    whole = api.get(path)
    assert whole.status_code == 200 and whole.content == content
    assert whole.headers["Accept-Ranges"] == "bytes"
    etag = whole.headers["ETag"]
    assert etag == f'"sha256:{artifact["sha256"]}"'
    # An interrupted download resumes from where it stopped, and the pieces add up exactly.
    received = content[:1_000_000]
    rest = api.get(path, headers={"Range": f"bytes={len(received)}-", "If-Range": etag})
    assert rest.status_code == 206
    assert rest.headers["Content-Range"] == f"bytes {len(received)}-{len(content) - 1}/{len(content)}"
    assert received + rest.content == content
    middle = api.get(path, headers={"Range": "bytes=10-19"})
    assert middle.status_code == 206 and middle.content == content[10:20]
    assert middle.headers["Content-Length"] == "10"
    suffix = api.get(path, headers={"Range": "bytes=-7"})
    assert suffix.content == content[-7:]
    stale = api.get(path, headers={"Range": "bytes=0-9", "If-Range": '"sha256:other"'})
    assert stale.status_code == 200 and stale.content == content
    beyond = api.get(path, headers={"Range": f"bytes={len(content)}-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(content)}"
    multi = api.get(path, headers={"Range": "bytes=0-1,5-6"})
    assert multi.status_code == 200 and multi.content == content


def test_signed_links(api: Api) -> None:
    content = os.urandom(50_000)
    artifact = api.artifact(content)
    link = api.post(f"/artifacts/{artifact['id']}/link").json()
    assert link["sha256"] == artifact["sha256"] and link["size"] == len(content)
    client = api.client
    assert client.get(link["url"]).content == content  # no bearer token
    resumed = client.get(link["url"], headers={"Range": "bytes=100-"})
    assert resumed.status_code == 206 and resumed.content == content[100:]
    tampered = link["url"].replace(artifact["id"], "art_someone_else")
    assert client.get(tampered).status_code == 403
    forged = link["url"].rsplit("signature=", 1)[0] + "signature=AAAA"
    assert client.get(forged).status_code == 403
    expires = int(link["url"].split("expires=")[1].split("&")[0])
    longer = link["url"].replace(f"expires={expires}", f"expires={expires + 3600}")
    assert client.get(longer).status_code == 403
    expired = link["url"].replace(f"expires={expires}", f"expires={int(time.time()) - 1}")
    assert client.get(expired).status_code == 403


def test_file_payloads_pin_their_artifact_and_block_its_deletion(api: Api) -> None:
    content = os.urandom(10_000)
    artifact = api.artifact(content, name="pkg.tar.gz", kind="package")
    wrong = api.post(
        "/releases",
        json={
            "name": "r",
            "version": "1",
            "payloads": [{"type": "file", "artifact_id": artifact["id"], "sha256": "1" * 64}],
        },
    )
    assert wrong.status_code == 400 and wrong.json()["errors"][0]["location"] == "body.payloads.0.sha256"
    release = api.release(payloads=[{"type": "file", "artifact_id": artifact["id"]}])
    assert release["payloads"][0]["sha256"] == artifact["sha256"]
    refused = api.delete(f"/artifacts/{artifact['id']}")
    assert refused.status_code == 409 and refused.json()["releases"] == [release["id"]]
    assert api.delete(f"/releases/{release['id']}").status_code == 204
    assert api.delete(f"/artifacts/{artifact['id']}").status_code == 204
    assert api.get(f"/artifacts/{artifact['id']}").status_code == 404


def test_artifact_permissions(api: Api) -> None:
    assert upload(api, b"x").status_code == 201  # type: ignore[attr-defined]
    viewer = api.call(
        "POST",
        "/artifacts",
        role="viewer",
        params={"name": "v.bin", "version": "1"},
        content=b"x",
        headers=OCTETS,
    )
    assert viewer.status_code == 403
    assert api.call("GET", "/artifacts", role="viewer").status_code == 200
    operator_upload = api.call(
        "POST",
        "/artifacts",
        role="operator",
        params={"name": "o.bin", "version": "1"},
        content=b"x",
        headers=OCTETS,
    )
    assert operator_upload.status_code == 403


def test_downloads_can_be_offloaded_to_nginx(sqlite_settings: Settings) -> None:
    settings = sqlite_settings.model_copy(update={"accel_redirect_prefix": "/_fleetlift_blobs/"})
    app = create_app(settings)
    token = local_issuer(settings).issue("alice", [Role.ADMIN], timedelta(minutes=5))
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        artifact = client.post(
            "/api/v1/artifacts", params={"name": "x.bin", "version": "accel"}, content=b"abc", headers=OCTETS
        ).json()
        response = client.get(f"/api/v1/artifacts/{artifact['id']}/download", headers={"Range": "bytes=1-"})
    assert response.status_code == 200 and response.content == b""
    redirect = response.headers["X-Accel-Redirect"]
    assert redirect.startswith("/_fleetlift_blobs/default/blob_")
    stored = Path(settings.artifact_root) / redirect.removeprefix("/_fleetlift_blobs/")
    assert stored.read_bytes() == b"abc"
    assert response.headers["ETag"] == f'"sha256:{artifact["sha256"]}"'
