"""Pure rules of artifacts: kinds, safe names, HTTP byte ranges and signed download links."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import StrEnum

from fleetlift.errors import FieldError, InvalidInput


class ArtifactKind(StrEnum):
    FIRMWARE = "firmware"
    PACKAGE = "package"  # a code package: zip, tar.gz
    PATCH_BUNDLE = "patch-bundle"
    BASE_BUNDLE = "base-bundle"
    FILE = "file"


# A file name a device can safely write: no directories, no parent references, no control
# characters, nothing a shell or a Content-Disposition header would misread.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-]{0,199}$")


def check_file_name(name: str, *, field: str) -> str:
    """Refuse names that could escape a directory or confuse a header (``../../etc/passwd``)."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise InvalidInput(
            f"'{name[:100]}' is not a safe file name: use letters, digits, '.', '_', '+', '-', "
            "no path separators and no '..'",
            errors=[FieldError(field, "unsafe file name")],
        )
    return name


class RangeNotSatisfiable(Exception):
    """The requested range lies outside the file (HTTP 416)."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range an HTTP ``Range`` header asks for, or None for the whole file.

    Malformed headers and multi-range requests are ignored (RFC 9110 lets a server send the whole
    representation); a range that starts past the end raises ``RangeNotSatisfiable``."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(size - suffix, 0), size - 1)
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return ByteRange(start, end)


def link_signature(secret: bytes, resource: str, expires: int) -> str:
    """The HMAC-SHA256 that makes a download link for ``resource`` valid until ``expires``."""
    digest = hmac.new(secret, f"{resource}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def link_is_valid(secret: bytes, resource: str, expires: int, signature: str, now: int) -> bool:
    """Whether a signed link is genuine and not expired (compared in constant time)."""
    if now > expires:
        return False
    return hmac.compare_digest(link_signature(secret, resource, expires), signature)
