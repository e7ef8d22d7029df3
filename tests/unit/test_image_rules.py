"""Image references, manifests, platform choice, auth challenges and Docker credentials."""

from __future__ import annotations

import base64
import json

import pytest

from fleetlift.errors import InvalidInput
from fleetlift.images.rules import (
    DOCKER_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ImageManifest,
    ImageRef,
    Index,
    ManifestError,
    Platform,
    credentials_from_docker_config,
    device_platform,
    digest_of,
    parse_challenge,
    parse_image_reference,
    parse_manifest,
    registry_host,
    runs_on,
    select_platform,
)

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nginx", ImageRef("docker.io", "library/nginx", "latest", None)),
        ("nginx:1.25", ImageRef("docker.io", "library/nginx", "1.25", None)),
        ("acme/app", ImageRef("docker.io", "acme/app", "latest", None)),
        ("ghcr.io/acme/app:2.0", ImageRef("ghcr.io", "acme/app", "2.0", None)),
        ("localhost/app:1", ImageRef("localhost", "app", "1", None)),
        ("127.0.0.1:5000/team/sub/app:v1", ImageRef("127.0.0.1:5000", "team/sub/app", "v1", None)),
        (f"registry.local/app@{D}", ImageRef("registry.local", "app", None, D)),
        (f"registry.local/app:1.0@{D}", ImageRef("registry.local", "app", "1.0", D)),
    ],
)
def test_references(text: str, expected: ImageRef) -> None:
    assert parse_image_reference(text) == expected


@pytest.mark.parametrize("text", ["", "UPPER/app", "app:", "app@sha256:short", "a//b", "app:tag with space"])
def test_bad_references(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_image_reference(text)


def test_reference_forms() -> None:
    ref = parse_image_reference("registry.local/app:1.0")
    assert ref.reference == "1.0"
    pinned = ref.pinned(D)
    assert pinned.reference == D and str(pinned) == f"registry.local/app:1.0@{D}"
    assert registry_host("docker.io") == "registry-1.docker.io"
    assert registry_host("ghcr.io") == "ghcr.io"
    assert digest_of(b"{}") == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


@pytest.mark.parametrize(
    ("reported", "platform"),
    [
        ("aarch64", Platform("linux", "arm64", "v8")),
        ("arm64", Platform("linux", "arm64", "v8")),
        ("armv7l", Platform("linux", "arm", "v7")),
        ("armhf", Platform("linux", "arm", "v7")),
        ("armv6l", Platform("linux", "arm", "v6")),
        ("x86_64", Platform("linux", "amd64")),
        ("riscv64", Platform("linux", "riscv64")),
    ],
)
def test_device_platforms(reported: str, platform: Platform) -> None:
    assert device_platform(reported) == platform


def _index(*platforms: Platform) -> Index:
    return Index(
        OCI_INDEX, tuple(Descriptor(OCI_MANIFEST, f"sha256:{i:064x}", 1, p) for i, p in enumerate(platforms))
    )


def test_platform_selection() -> None:
    amd64, arm64, armv7, armv6 = (
        Platform("linux", "amd64"),
        Platform("linux", "arm64"),  # no variant: arm64 means v8
        Platform("linux", "arm", "v7"),
        Platform("linux", "arm", "v6"),
    )
    index = _index(amd64, arm64, armv6, armv7)
    assert select_platform(index, device_platform("aarch64")).platform == arm64  # type: ignore[union-attr]
    assert select_platform(index, device_platform("armv7l")).platform == armv7  # type: ignore[union-attr]
    assert select_platform(index, device_platform("armv6l")).platform == armv6  # type: ignore[union-attr]
    assert select_platform(index, device_platform("x86_64")).platform == amd64  # type: ignore[union-attr]
    only_v6 = _index(armv6)
    assert select_platform(only_v6, device_platform("armv7")).platform == armv6  # type: ignore[union-attr]
    assert select_platform(_index(armv7), device_platform("armv6")) is None  # v7 code does not run on v6
    assert select_platform(_index(amd64), device_platform("aarch64")) is None
    assert select_platform(_index(Platform("windows", "amd64")), device_platform("x86_64")) is None
    assert runs_on(arm64, device_platform("arm64")) and not runs_on(amd64, device_platform("arm64"))


def test_manifest_parsing() -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": D,
                "size": 5,
                "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
            }
        ],
    }
    parsed = parse_manifest(json.dumps(index).encode(), DOCKER_LIST)
    assert isinstance(parsed, Index) and parsed.manifests[0].platform == Platform("linux", "arm", "v7")
    manifest = {"schemaVersion": 2, "config": {"mediaType": "x", "digest": D, "size": 1}, "layers": []}
    parsed_manifest = parse_manifest(json.dumps(manifest).encode(), "application/octet-stream")
    assert isinstance(parsed_manifest, ImageManifest) and parsed_manifest.config.digest == D
    for bad in (b"not json", b"[]", b'{"schemaVersion": 1, "fsLayers": []}', b'{"manifests": [{"size": 1}]}'):
        with pytest.raises(ManifestError):
            parse_manifest(bad, None)


def test_auth_challenges() -> None:
    bearer = parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull"'
    )
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:a/b:pull",
    }
    assert parse_challenge('Basic realm="Registry Realm"').params == {"realm": "Registry Realm"}
    assert parse_challenge('Bearer realm="x\\"y"').params["realm"] == 'x"y'


def test_docker_config_credentials() -> None:
    encoded = base64.b64encode(b"bob:pa:ss").decode()
    config = {
        "auths": {
            "registry.local:5000": {"auth": encoded},
            "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
            "broken.example": {"auth": "!!!"},
        }
    }
    local = credentials_from_docker_config(config, "registry.local:5000")
    assert local is not None and (local.username, local.password) == ("bob", "pa:ss")
    assert "pa:ss" not in repr(local)
    hub = credentials_from_docker_config(config, "docker.io")
    assert hub is not None and hub.username == "hub"
    assert credentials_from_docker_config(config, "elsewhere.io") is None
    assert credentials_from_docker_config(config, "broken.example") is None
    assert credentials_from_docker_config({}, "x") is None
