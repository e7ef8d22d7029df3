"""The registry client against a real registry (Debian's docker-registry) holding images that
skopeo pushed from OCI layouts built here: plain, basic-auth and token-auth registries."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import pytest

from fleetlift.adapters.oci_registry import OciRegistryClient
from fleetlift.errors import BackendUnavailable, BadGateway
from fleetlift.images.rules import (
    OCI_INDEX,
    Credentials,
    ImageNotFound,
    Platform,
    credentials_from_docker_config,
    device_platform,
    digest_of,
    parse_image_reference,
)

from ..oci_layout import build_image
from ..registry import PASSWORD, USER, Registry, run_registry, unavailable_reason

pytestmark = pytest.mark.registry

AMD64, ARM64, ARMV7 = (
    Platform("linux", "amd64"),
    Platform("linux", "arm64", "v8"),
    Platform("linux", "arm", "v7"),
)


@pytest.fixture(scope="module")
def tools() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"registry leg skipped: {reason}")


def _registry(tmp_path_factory: pytest.TempPathFactory, auth: str) -> Iterator[Registry]:
    workdir = tmp_path_factory.mktemp(f"registry-{auth}")
    with run_registry(workdir / "registry", auth) as registry:
        multi = build_image(workdir / "multi", "1.0", [AMD64, ARM64, ARMV7])
        single = build_image(workdir / "single", "2.0", [ARM64], label="single")
        registry.push(workdir / "multi", "1.0", "acme/telemetry")
        registry.push(workdir / "single", "2.0", "acme/agent")
        registry.built = {"multi": multi, "single": single}  # type: ignore[attr-defined]
        yield registry


@pytest.fixture(scope="module")
def plain(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _registry(tmp_path_factory, "none")


@pytest.fixture(scope="module")
def basic(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _registry(tmp_path_factory, "basic")


@pytest.fixture(scope="module")
def token(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _registry(tmp_path_factory, "token")


def run(coroutine_function, *args):  # type: ignore[no-untyped-def]
    async def scenario():  # type: ignore[no-untyped-def]
        client = OciRegistryClient(**args[0]) if args else OciRegistryClient()
        try:
            return await coroutine_function(client)
        finally:
            await client.close()

    return anyio.run(scenario)


def test_multi_platform_tag_resolves_to_the_index_digest(plain: Registry) -> None:
    built = plain.built["multi"]  # type: ignore[attr-defined]
    ref = parse_image_reference(f"{plain.host}/acme/telemetry:1.0")

    async def scenario(client: OciRegistryClient):  # type: ignore[no-untyped-def]
        return await client.resolve(ref)

    resolved = run(scenario)
    assert resolved.digest == built.index_digest
    assert resolved.media_type == OCI_INDEX
    assert set(resolved.platforms) == {AMD64, ARM64, ARMV7}
    assert str(resolved.ref) == f"{plain.host}/acme/telemetry:1.0@{built.index_digest}"


def test_the_right_platform_is_picked_for_each_device(plain: Registry) -> None:
    built = plain.built["multi"]  # type: ignore[attr-defined]
    ref = parse_image_reference(f"{plain.host}/acme/telemetry:1.0")

    async def scenario(client: OciRegistryClient):  # type: ignore[no-untyped-def]
        return {
            arch: await client.config_for(ref, device_platform(arch))
            for arch in ("aarch64", "armv7l", "x86_64", "riscv64")
        }

    picks = run(scenario)
    assert picks["aarch64"][0] == built.manifests["linux/arm64/v8"]
    assert picks["aarch64"][1]["architecture"] == "arm64"
    assert picks["armv7l"][0] == built.manifests["linux/arm/v7"]
    assert picks["x86_64"][0] == built.manifests["linux/amd64"]
    assert picks["riscv64"] is None


def test_single_platform_image_and_pinned_reference(plain: Registry) -> None:
    built = plain.built["single"]  # type: ignore[attr-defined]
    digest = built.manifests["linux/arm64/v8"]

    async def scenario(client: OciRegistryClient):  # type: ignore[no-untyped-def]
        by_tag = await client.resolve(parse_image_reference(f"{plain.host}/acme/agent:2.0"))
        by_digest = await client.manifest(parse_image_reference(f"{plain.host}/acme/agent@{digest}"))
        return by_tag, by_digest

    by_tag, by_digest = run(scenario)
    assert by_tag.digest == digest and by_tag.platforms == (ARM64,)
    assert by_digest.digest == digest == digest_of(by_digest.content)


def test_missing_tag_and_repository(plain: Registry) -> None:
    async def scenario(client: OciRegistryClient) -> None:
        with pytest.raises(ImageNotFound, match="does not exist"):
            await client.resolve(parse_image_reference(f"{plain.host}/acme/telemetry:9.9"))
        with pytest.raises(ImageNotFound):
            await client.resolve(parse_image_reference(f"{plain.host}/nobody/nothing:1"))

    run(scenario)


def test_basic_auth_with_credentials_from_docker_config(basic: Registry) -> None:
    ref = parse_image_reference(f"{basic.host}/acme/agent:2.0")
    import base64

    docker_config = {
        "auths": {basic.host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}
    }

    async def anonymous(client: OciRegistryClient) -> None:
        with pytest.raises(BadGateway, match="needs credentials"):
            await client.resolve(ref)

    run(anonymous)

    async def authorised(client: OciRegistryClient):  # type: ignore[no-untyped-def]
        return await client.resolve(ref)

    resolved = run(
        authorised, {"credentials": lambda registry: credentials_from_docker_config(docker_config, registry)}
    )
    assert resolved.digest == basic.built["single"].manifests["linux/arm64/v8"]  # type: ignore[attr-defined]

    async def wrong(client: OciRegistryClient) -> None:
        with pytest.raises(BadGateway, match="refused"):
            await client.resolve(ref)

    run(wrong, {"credentials": lambda registry: Credentials(USER, "wrong")})


def test_bearer_token_flow(token: Registry) -> None:
    assert token.tokens is not None
    ref = parse_image_reference(f"{token.host}/acme/telemetry:1.0")
    before = len(token.tokens.requests)

    async def authorised(client: OciRegistryClient):  # type: ignore[no-untyped-def]
        first = await client.resolve(ref)
        await client.config_for(ref, device_platform("aarch64"))
        return first

    resolved = run(authorised, {"credentials": lambda registry: Credentials(USER, PASSWORD)})
    assert resolved.digest == token.built["multi"].index_digest  # type: ignore[attr-defined]
    requests = token.tokens.requests[before:]
    assert len(requests) == 1 and "scope=repository%3Aacme%2Ftelemetry%3Apull" in requests[0]

    async def anonymous(client: OciRegistryClient) -> None:
        with pytest.raises(BadGateway, match="refused access"):
            await client.resolve(ref)

    run(anonymous)

    async def wrong(client: OciRegistryClient) -> None:
        with pytest.raises(BadGateway, match="refused the configured credentials"):
            await client.resolve(ref)

    run(wrong, {"credentials": lambda registry: Credentials(USER, "nope")})


def test_registry_down_and_slow() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]

    async def down(client: OciRegistryClient) -> None:
        with pytest.raises(BackendUnavailable, match="cannot be reached"):
            await client.resolve(parse_image_reference(f"127.0.0.1:{closed_port}/acme/app:1"))

    run(down)

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    try:

        async def slow(client: OciRegistryClient) -> None:
            with pytest.raises(BackendUnavailable, match="did not answer in time"):
                await client.resolve(parse_image_reference(f"127.0.0.1:{silent.getsockname()[1]}/acme/app:1"))

        run(slow, {"timeout": 0.5})
    finally:
        silent.close()


@pytest.fixture
def lying_registry() -> Iterator[str]:
    """A registry that claims a digest its bytes do not have."""
    manifest = (
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", '
        b'"config": {"digest": "sha256:' + b"0" * 64 + b'", "size": 2}, "layers": []}'
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            self.send_header("Docker-Content-Digest", "sha256:" + "f" * 64)
            self.send_header("Content-Length", str(len(manifest)))
            self.end_headers()
            self.wfile.write(manifest)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_digest_that_does_not_match_the_bytes_is_refused(lying_registry: str) -> None:
    async def scenario(client: OciRegistryClient) -> None:
        with pytest.raises(BadGateway, match="hash to sha256:"):
            await client.manifest(parse_image_reference(f"{lying_registry}/acme/app:1"))
        pinned = parse_image_reference(f"{lying_registry}/acme/app@sha256:{'a' * 64}")
        with pytest.raises(BadGateway):
            await client.manifest(pinned)

    run(scenario)


def test_tokens_are_never_shared_across_credentials(token: Registry) -> None:
    ref = parse_image_reference(f"{token.host}/acme/telemetry:1.0")

    async def scenario() -> None:
        shared = OciRegistryClient()
        try:
            tenant_a = shared.bound(lambda registry: Credentials(USER, PASSWORD))
            tenant_b = shared.bound(lambda registry: None)
            assert (await tenant_a.resolve(ref)).digest
            with pytest.raises(BadGateway, match="refused access"):
                await tenant_b.resolve(ref)  # same scope, but A's token must not serve B
            assert (await tenant_a.resolve(ref)).digest  # A's cached token still works
        finally:
            await shared.close()

    anyio.run(scenario)
