"""OCI image layouts built from scratch for the registry tests: single- and multi-platform."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from fleetlift.images.rules import OCI_INDEX, OCI_MANIFEST, Platform


@dataclass(frozen=True)
class BuiltImage:
    index_digest: str | None  # the image index of a multi-platform image
    manifests: dict[str, str]  # platform -> manifest digest


def _blob(layout: Path, content: bytes) -> dict[str, object]:
    digest = hashlib.sha256(content).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(content)
    return {"digest": f"sha256:{digest}", "size": len(content)}


def _layer(text: str) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), "sha256:" + hashlib.sha256(uncompressed).hexdigest()


def _manifest(layout: Path, platform: Platform, label: str) -> dict[str, object]:
    layer, diff_id = _layer(f"{label} on {platform}")
    config: dict[str, object] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {"Cmd": ["/hello"], "Labels": {"test.label": label}},
    }
    if platform.variant:
        config["variant"] = platform.variant
    config_descriptor = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **_blob(layout, json.dumps(config).encode()),
    }
    layer_descriptor = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(layout, layer)}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor,
        "layers": [layer_descriptor],
    }
    return {"mediaType": OCI_MANIFEST, **_blob(layout, json.dumps(manifest).encode())}


def build_image(layout: Path, tag: str, platforms: list[Platform], label: str = "v1") -> BuiltImage:
    """Write an OCI layout at ``layout`` holding one image under ``tag``."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    manifests = {}
    descriptors = []
    for platform in platforms:
        descriptor = _manifest(layout, platform, label)
        manifests[str(platform)] = str(descriptor["digest"])
        platform_doc = {"os": platform.os, "architecture": platform.architecture}
        if platform.variant:
            platform_doc["variant"] = platform.variant
        descriptors.append({**descriptor, "platform": platform_doc})
    annotation = {"org.opencontainers.image.ref.name": tag}
    if len(platforms) == 1:
        top = {**{k: v for k, v in descriptors[0].items() if k != "platform"}, "annotations": annotation}
        index_digest = None
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        top = {"mediaType": OCI_INDEX, **_blob(layout, json.dumps(index).encode()), "annotations": annotation}
        index_digest = str(top["digest"])
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return BuiltImage(index_digest, manifests)


def simple_signing_payload(repository: str, digest: str) -> bytes:
    """The JSON cosign signs for an image: it names the manifest digest."""
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": repository},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()


def build_signature_image(layout: Path, tag: str, payload: bytes, signature_b64: str) -> None:
    """Write a cosign-style signature image (one simple-signing layer) under ``tag``."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = {"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_blob(layout, json.dumps(config).encode()),
        },
        "layers": [
            {
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                **_blob(layout, payload),
                "annotations": {"dev.cosignproject.cosign/signature": signature_b64},
            }
        ],
    }
    top = {
        "mediaType": OCI_MANIFEST,
        **_blob(layout, json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
