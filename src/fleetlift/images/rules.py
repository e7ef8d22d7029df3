"""Pure rules about container images: references, manifests, digests, platforms, and the
registry's authentication challenges. No I/O; the registry adapter does the talking."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetlift.errors import FieldError, InvalidInput

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPTED_MANIFESTS = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"^(?:(?P<registry>(?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::[0-9]+)?)/)?"
    rf"(?P<repository>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference, with Docker's defaults filled in."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> ImageRef:
        """The same image named by digest (the tag kept for people reading it)."""
        return ImageRef(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_image_reference(text: str) -> ImageRef:
    """``nginx``, ``ghcr.io/acme/app:1.2``, ``127.0.0.1:5000/app@sha256:...`` as an ``ImageRef``."""
    match = _REFERENCE.match(text)
    if match is None:
        raise InvalidInput(
            f"'{text[:200]}' is not an image reference like registry.example.com/team/app:1.0",
            errors=[FieldError("image", "not an image reference")],
        )
    registry, repository = match.group("registry"), match.group("repository")
    # Docker's rule: the first component is a registry only if it looks like a host.
    if registry is not None and not ("." in registry or ":" in registry or registry == "localhost"):
        if not re.fullmatch(_COMPONENT, registry):
            raise InvalidInput(
                f"'{text[:200]}' is not an image reference: repository names are lower case",
                errors=[FieldError("image", "not an image reference")],
            )
        repository = f"{registry}/{repository}"
        registry = None
    if registry is None:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    tag = match.group("tag")
    digest = match.group("digest")
    return ImageRef(registry, repository, tag if tag or digest else "latest", digest)


def registry_host(registry: str) -> str:
    """The host that serves a registry's API (Docker Hub's differs from its name)."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def digest_of(content: bytes) -> str:
    """The content digest of manifest bytes, as registries compute it."""
    return "sha256:" + hashlib.sha256(content).hexdigest()


def is_digest(text: str) -> bool:
    return bool(_DIGEST.match(text))


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None


@dataclass(frozen=True)
class Index:
    """An OCI image index or a Docker manifest list: one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


_ARCHITECTURES: dict[str, tuple[str, str | None]] = {
    "amd64": ("amd64", None),
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "arm64": ("arm64", "v8"),
    "aarch64": ("arm64", "v8"),
    "armv8": ("arm64", "v8"),
    "arm": ("arm", "v7"),
    "armhf": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv7l": ("arm", "v7"),
    "armv6": ("arm", "v6"),
    "armv6l": ("arm", "v6"),
    "armel": ("arm", "v5"),
    "armv5": ("arm", "v5"),
    "i386": ("386", None),
    "i686": ("386", None),
    "386": ("386", None),
    "riscv64": ("riscv64", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
}


def device_platform(architecture: str, os: str = "linux") -> Platform:
    """The OCI platform of a device architecture as devices report it (``aarch64``, ``armv7l``...)."""
    arch, variant = _ARCHITECTURES.get(architecture.lower(), (architecture.lower(), None))
    return Platform(os, arch, variant)


def _normalised(platform: Platform) -> Platform:
    arch, default_variant = _ARCHITECTURES.get(platform.architecture, (platform.architecture, None))
    return Platform(platform.os, arch, platform.variant or default_variant)


def _runs_on(image: Platform, device: Platform) -> int | None:
    """How well an image platform fits a device: 0 is exact, higher is a worse but working fit
    (an armv6 image on an armv7 device); None when it cannot run."""
    image, device = _normalised(image), _normalised(device)
    if image.os != device.os or image.architecture != device.architecture:
        return None
    if image.architecture != "arm":
        return 0 if image.variant in (None, device.variant) or device.variant is None else None
    # 32-bit ARM runs older variants: v7 runs v6 and v5 code.
    levels = {"v5": 5, "v6": 6, "v7": 7, "v8": 8}
    have, want = levels.get(device.variant or "v7", 7), levels.get(image.variant or "v7", 7)
    return have - want if want <= have else None


def select_platform(index: Index, device: Platform) -> Descriptor | None:
    """The manifest of an index that runs best on ``device``, or None when none does."""
    fits = [
        (fit, position, descriptor)
        for position, descriptor in enumerate(index.manifests)
        if descriptor.platform is not None and (fit := _runs_on(descriptor.platform, device)) is not None
    ]
    return min(fits)[2] if fits else None


def runs_on(image: Platform, device: Platform) -> bool:
    """Whether an image of platform ``image`` runs on ``device``."""
    return _runs_on(image, device) is not None


def _descriptor(document: Mapping[str, Any]) -> Descriptor:
    platform = document.get("platform")
    annotations = document.get("annotations")
    return Descriptor(
        media_type=str(document.get("mediaType", "")),
        digest=str(document["digest"]),
        size=int(document.get("size", 0)),
        platform=None
        if not isinstance(platform, Mapping)
        else Platform(
            str(platform.get("os", "")), str(platform.get("architecture", "")), platform.get("variant")
        ),
        annotations={str(k): str(v) for k, v in annotations.items()}
        if isinstance(annotations, Mapping)
        else {},
        artifact_type=str(document["artifactType"]) if document.get("artifactType") else None,
    )


class ManifestError(ValueError):
    """Bytes that are not a manifest this code understands."""


def parse_manifest(content: bytes, media_type: str | None) -> Index | ImageManifest:
    """An index or an image manifest from the registry's bytes; the media type comes from the
    document when the header is missing or generic."""
    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError) as error:
        raise ManifestError("the manifest is not JSON") from error
    if not isinstance(document, dict):
        raise ManifestError("the manifest is not a JSON object")
    kind = document.get("mediaType") or media_type or ""
    try:
        if kind in INDEX_TYPES or ("manifests" in document and kind not in MANIFEST_TYPES):
            return Index(kind or OCI_INDEX, tuple(_descriptor(m) for m in document["manifests"]))
        if kind in MANIFEST_TYPES or "config" in document:
            return ImageManifest(
                kind or OCI_MANIFEST,
                _descriptor(document["config"]),
                tuple(_descriptor(layer) for layer in document.get("layers", [])),
            )
    except (KeyError, TypeError, ValueError) as error:
        raise ManifestError(f"the manifest is malformed: {error}") from error
    raise ManifestError(f"unsupported manifest media type {kind!r} (schema 1 manifests are not supported)")


def config_platform(config: Mapping[str, Any]) -> Platform:
    """The platform an image config declares."""
    return Platform(str(config.get("os", "")), str(config.get("architecture", "")), config.get("variant"))


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> Challenge:
    """``Bearer realm="https://auth/token",service="registry",scope="repository:a:pull"``."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            break
        value = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        position = match.end()
    return Challenge(scheme.lower(), params)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # credentials never end up in logs through a repr
        return f"Credentials(username={self.username!r}, password='***')"


def credentials_from_docker_config(config: Mapping[str, Any], registry: str) -> Credentials | None:
    """Credentials for ``registry`` from a Docker ``config.json`` (``auths``; ``auth`` is base64 of
    ``user:password``, or ``username``/``password`` fields)."""
    auths = config.get("auths")
    if not isinstance(auths, Mapping):
        return None
    keys: Sequence[str] = [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/"]
    if registry == DOCKER_HUB:
        keys = ["https://index.docker.io/v1/", "index.docker.io", "docker.io", *keys]
    for key in keys:
        entry = auths.get(key)
        if not isinstance(entry, Mapping):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            return Credentials(user, password)
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(entry["username"], entry["password"])
    return None


class ImageNotFound(InvalidInput):
    type_slug = "image-not-found"
    title = "Image not found"


@dataclass(frozen=True)
class ResolvedImage:
    """What a reference points at now: the digest to pin, and the platforms it offers."""

    ref: ImageRef
    digest: str
    media_type: str
    platforms: tuple[Platform, ...]
    manifest_digests: dict[str, str] = field(default_factory=dict)  # platform -> manifest digest
