"""A client of the OCI Distribution API over httpx: manifests and blobs, verified by digest,
with anonymous, basic and bearer-token authentication."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from fleetlift.errors import BackendUnavailable, BadGateway, FieldError
from fleetlift.images.rules import (
    ACCEPTED_MANIFESTS,
    OCI_INDEX,
    Credentials,
    Descriptor,
    ImageManifest,
    ImageNotFound,
    ImageRef,
    Index,
    ManifestError,
    Platform,
    ResolvedImage,
    config_platform,
    digest_of,
    parse_challenge,
    parse_manifest,
    registry_host,
    select_platform,
)
from fleetlift.images.signatures import (
    DSSE_ENVELOPE,
    SIGNATURE_ANNOTATION,
    SIGSTORE_BUNDLE_TYPES,
    SIMPLE_SIGNING,
    SignatureLayer,
    signature_tag,
)
from fleetlift.images.vulnerabilities import TRIVY_REPORT

log = logging.getLogger("fleetlift.registry")

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the distribution spec's limit; more is an attack or a bug
MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_REPORT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class FetchedManifest:
    content: bytes
    media_type: str
    digest: str
    document: Index | ImageManifest


@dataclass
class _Token:
    value: str
    expires_at: float


class OciRegistryClient:
    """Reads images from any registry that speaks the OCI Distribution API."""

    def __init__(
        self,
        *,
        credentials: Callable[[str], Credentials | None] = lambda registry: None,
        plain_http: frozenset[str] = frozenset(),
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        shared_with: OciRegistryClient | None = None,
    ) -> None:
        self.credentials = credentials
        self.plain_http = plain_http
        self.owns_http = shared_with is None
        if shared_with is None:
            self.http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=True)
            # Keyed by the identity that earned them: a token is never used for other credentials.
            self.tokens: dict[tuple[str, str, str], _Token] = {}
            self.basic: set[tuple[str, str]] = set()
        else:
            self.http, self.tokens, self.basic = shared_with.http, shared_with.tokens, shared_with.basic

    def bound(self, credentials: Callable[[str], Credentials | None]) -> OciRegistryClient:
        """A client that shares connections and caches with this one but answers challenges with
        other credentials (a tenant's)."""
        return OciRegistryClient(credentials=credentials, plain_http=self.plain_http, shared_with=self)

    def _identity(self, registry: str) -> str:
        credentials = self.credentials(registry)
        return "" if credentials is None else credentials.username

    async def close(self) -> None:
        if self.owns_http:
            await self.http.aclose()

    def _base(self, registry: str) -> str:
        host = registry_host(registry)
        local = host.startswith(("127.", "localhost")) or host.split(":")[0] in ("localhost", "::1")
        scheme = "http" if local or registry in self.plain_http else "https"
        return f"{scheme}://{host}/v2"

    async def _get(self, ref: ImageRef, path: str, headers: dict[str, str]) -> httpx.Response:
        """GET with whatever authentication the registry asks for, retried once after a challenge."""
        scope = f"repository:{ref.repository}:pull"
        url = f"{self._base(ref.registry)}/{ref.repository}/{path}"
        for attempt in (1, 2):
            request_headers = dict(headers)
            authorization = self._authorization(ref.registry, scope)
            if authorization:
                request_headers["Authorization"] = authorization
            try:
                response = await self.http.get(url, headers=request_headers)
            except httpx.TimeoutException:
                raise BackendUnavailable(f"registry {ref.registry} did not answer in time") from None
            except httpx.TransportError as error:
                raise BackendUnavailable(
                    f"registry {ref.registry} cannot be reached: {type(error).__name__}"
                ) from None
            if response.status_code != 401 or attempt == 2:
                return response
            await self._answer_challenge(ref.registry, scope, response.headers.get("www-authenticate", ""))
        raise AssertionError("unreachable")

    def _authorization(self, registry: str, scope: str) -> str | None:
        token = self.tokens.get((registry, scope, self._identity(registry)))
        if token is not None and token.expires_at > time.monotonic():
            return f"Bearer {token.value}"
        if (registry, self._identity(registry)) in self.basic:
            credentials = self.credentials(registry)
            if credentials is not None:
                pair = f"{credentials.username}:{credentials.password}".encode()
                return "Basic " + base64.b64encode(pair).decode()
        return None

    async def _answer_challenge(self, registry: str, scope: str, header: str) -> None:
        challenge = parse_challenge(header)
        credentials = self.credentials(registry)
        if challenge.scheme == "basic":
            if credentials is None:
                raise BadGateway(f"registry {registry} needs credentials and none are configured for it")
            self.basic.add((registry, credentials.username))
            return
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise BadGateway(
                f"registry {registry} asks for an authentication scheme fleetlift does not speak"
            )
        params = {"scope": challenge.params.get("scope", scope)}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        auth = None if credentials is None else httpx.BasicAuth(credentials.username, credentials.password)
        try:
            response = await self.http.get(challenge.params["realm"], params=params, auth=auth)
        except httpx.HTTPError:
            raise BackendUnavailable(f"the token service of registry {registry} cannot be reached") from None
        if response.status_code in (401, 403):
            raise BadGateway(f"the token service of registry {registry} refused the configured credentials")
        if response.status_code != 200:
            raise BadGateway(f"the token service of registry {registry} answered {response.status_code}")
        body = response.json()
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise BadGateway(f"the token service of registry {registry} sent no token")
        lifetime = body.get("expires_in") if isinstance(body.get("expires_in"), int) else 60
        # Refresh a little early so a token never expires between check and use.
        self.tokens[(registry, scope, self._identity(registry))] = _Token(
            value, time.monotonic() + max(lifetime - 10, 1)
        )

    async def manifest(self, ref: ImageRef, reference: str | None = None) -> FetchedManifest:
        """A manifest or index by tag or digest, its digest computed from the bytes received."""
        wanted = reference or ref.reference
        response = await self._get(ref, f"manifests/{wanted}", {"Accept": ", ".join(ACCEPTED_MANIFESTS)})
        if response.status_code == 404:
            raise ImageNotFound(
                f"image {ref.registry}/{ref.repository}:{wanted} does not exist",
                errors=[FieldError("image", "no such tag or digest in the registry")],
            )
        if response.status_code == 401:
            raise BadGateway(f"registry {ref.registry} refused access to {ref.repository}")
        if response.status_code != 200:
            raise BadGateway(f"registry {ref.registry} answered {response.status_code} for {ref.repository}")
        content = response.content
        if len(content) > MAX_MANIFEST_BYTES:
            raise BadGateway(
                f"registry {ref.registry} sent a manifest larger than {MAX_MANIFEST_BYTES} bytes"
            )
        digest = digest_of(content)
        claimed = response.headers.get("docker-content-digest")
        # The registry's header is a claim; the bytes are the truth.
        if claimed is not None and claimed != digest:
            raise BadGateway(
                f"registry {ref.registry} says {ref.repository}:{wanted} is {claimed}, "
                f"but its bytes hash to {digest}"
            )
        if wanted.startswith("sha256:") and wanted != digest:
            raise BadGateway(
                f"registry {ref.registry} answered {wanted} with content that hashes to {digest}"
            )
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        try:
            document = parse_manifest(content, media_type)
        except ManifestError as error:
            raise BadGateway(f"{ref}: {error}") from None
        return FetchedManifest(content, document.media_type, digest, document)

    async def blob_json(self, ref: ImageRef, digest: str) -> dict[str, Any]:
        """A small JSON blob (an image config), checked against its digest."""
        content = await self._blob(ref, digest, limit=MAX_CONFIG_BYTES)
        try:
            document = json.loads(content)
        except ValueError:
            raise BadGateway(f"blob {digest} is not JSON") from None
        if not isinstance(document, dict):
            raise BadGateway(f"blob {digest} is not a JSON object")
        return document

    async def resolve(self, ref: ImageRef) -> ResolvedImage:
        """The digest a reference points at now, and every platform it offers."""
        top = await self.manifest(ref)
        if isinstance(top.document, Index):
            platforms = tuple(d.platform for d in top.document.manifests if d.platform is not None)
            digests = {str(d.platform): d.digest for d in top.document.manifests if d.platform is not None}
            return ResolvedImage(ref.pinned(top.digest), top.digest, top.media_type, platforms, digests)
        config = await self.blob_json(ref, top.document.config.digest)
        platform = config_platform(config)
        return ResolvedImage(
            ref.pinned(top.digest), top.digest, top.media_type, (platform,), {str(platform): top.digest}
        )

    async def config_for(self, ref: ImageRef, device: Platform) -> tuple[str, dict[str, Any]] | None:
        """The manifest digest and image config a device of ``device`` platform would run, or
        None when the image has nothing for it."""
        top = await self.manifest(ref)
        manifest = top
        if isinstance(top.document, Index):
            chosen = select_platform(top.document, device)
            if chosen is None:
                return None
            manifest = await self.manifest(ref, chosen.digest)
        if not isinstance(manifest.document, ImageManifest):
            raise BadGateway(f"{ref}: an index inside an index is not supported")
        return manifest.digest, await self.blob_json(ref, manifest.document.config.digest)

    async def signature_layers(self, ref: ImageRef, digest: str) -> list[SignatureLayer]:
        """The cosign simple-signing layers stored for ``digest`` (none when it is unsigned)."""
        try:
            signatures = await self.manifest(ref, signature_tag(digest))
        except ImageNotFound:
            return []
        if not isinstance(signatures.document, ImageManifest):
            return []
        layers = []
        for layer in signatures.document.layers:
            if layer.media_type != SIMPLE_SIGNING:
                continue
            payload = await self._blob(ref, layer.digest, limit=MAX_CONFIG_BYTES)
            layers.append(SignatureLayer(payload, layer.annotations.get(SIGNATURE_ANNOTATION)))
        return layers

    async def _blob(self, ref: ImageRef, digest: str, *, limit: int) -> bytes:
        response = await self._get(ref, f"blobs/{digest}", {})
        if response.status_code != 200:
            raise BadGateway(f"registry {ref.registry} answered {response.status_code} for blob {digest}")
        content = response.content
        if len(content) > limit or digest_of(content) != digest:
            raise BadGateway(f"registry {ref.registry} sent blob content that does not match {digest}")
        return content

    async def referrers(self, ref: ImageRef, digest: str) -> list[Descriptor]:
        """Artifacts that refer to ``digest`` (signatures, reports): the OCI 1.1 referrers API,
        or, for registries that lack it, the ``sha256-<hex>`` tag that lists them."""
        response = await self._get(ref, f"referrers/{digest}", {"Accept": OCI_INDEX})
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if response.status_code == 200 and content_type == OCI_INDEX:
            document = parse_manifest(response.content, OCI_INDEX)
            return list(document.manifests) if isinstance(document, Index) else []
        try:
            listed = await self.manifest(ref, digest.replace(":", "-", 1))
        except ImageNotFound:
            return []
        return list(listed.document.manifests) if isinstance(listed.document, Index) else []

    async def vulnerability_report(self, ref: ImageRef, digest: str) -> dict[str, Any] | None:
        """The newest Trivy JSON report attached to ``digest``, or None when there is none."""
        reports = [d for d in await self.referrers(ref, digest) if d.artifact_type == TRIVY_REPORT]
        if not reports:
            return None
        manifest = await self.manifest(ref, reports[-1].digest)
        if not isinstance(manifest.document, ImageManifest) or not manifest.document.layers:
            raise BadGateway(f"the scan report attached to {ref} has no content")
        content = await self._blob(ref, manifest.document.layers[0].digest, limit=MAX_REPORT_BYTES)
        try:
            report = json.loads(content)
        except ValueError:
            raise BadGateway(f"the scan report attached to {ref} is not JSON") from None
        return report if isinstance(report, dict) else None

    async def sigstore_bundles(self, ref: ImageRef, digest: str) -> list[object]:
        """The Sigstore bundles attached to ``digest`` as referrers (each its JSON document)."""
        bundles: list[object] = []
        for descriptor in await self.referrers(ref, digest):
            if descriptor.artifact_type not in SIGSTORE_BUNDLE_TYPES:
                continue
            manifest = await self.manifest(ref, descriptor.digest)
            if not isinstance(manifest.document, ImageManifest):
                continue
            for layer in manifest.document.layers:
                content = await self._blob(ref, layer.digest, limit=MAX_CONFIG_BYTES)
                try:
                    bundles.append(json.loads(content))
                except ValueError:
                    bundles.append(None)  # counted, and refused, by the verifier
        return bundles

    async def attestations(self, ref: ImageRef, digest: str) -> list[object]:
        """The DSSE envelopes cosign attached to ``digest`` (the ``sha256-<hex>.att`` tag)."""
        try:
            attached = await self.manifest(ref, signature_tag(digest, "att"))
        except ImageNotFound:
            return []
        if not isinstance(attached.document, ImageManifest):
            return []
        envelopes: list[object] = []
        for layer in attached.document.layers:
            if layer.media_type != DSSE_ENVELOPE:
                continue
            content = await self._blob(ref, layer.digest, limit=MAX_REPORT_BYTES)
            try:
                envelopes.append(json.loads(content))
            except ValueError:
                envelopes.append(None)
        return envelopes
