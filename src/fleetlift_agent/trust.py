"""TUF verification of downloaded files (python-tuf ``ngclient``).

The downloader fetches a file through its signed link; this module only answers "is this file the
target the repository's signed metadata names?". The metadata of one tenant is kept under the
agent's data dir, so rollback protection (never accept older versions than seen) survives restarts.

Trust anchor, in order of strength:

- ``root_path``: a ``root.json`` shipped with the device image (the secure way: a machine-in-the-
  middle on first contact cannot substitute its own keys).
- trust on first use (no ``root_path``): ``1.root.json`` is fetched from the server once, kept, and
  trusted from then on. Weaker: whoever answers that first request chooses the keys. Key rotations
  afterwards are followed the normal TUF way in both cases.

``tuf`` is imported inside the class so an agent that never verifies does not pay for it.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from fleetlift_agent import __version__

if TYPE_CHECKING:
    from tuf.api.metadata import TargetFile
    from tuf.ngclient import Updater

ANCHOR_NAME = "anchor.root.json"
_ROOT_MAX_LENGTH = 512_000  # python-tuf's own default cap for a root file


class UntrustedTarget(Exception):
    """The file is not a target the signed metadata vouches for, or the metadata is not valid."""


class TrustUnavailable(UntrustedTarget):
    """The metadata could not be fetched (network, server down): try again later. Still untrusted."""


class TargetVerifier:
    """Verifies downloads against the TUF repository of one tenant on one server.

    ``server_url``: the fleetlift server base URL. ``data_dir``: the agent's data dir; metadata
    lives in ``<data_dir>/tuf/<tenant>``. ``refresh_interval``: seconds during which fetched
    metadata is reused; a target the cached metadata does not know forces one fresh look."""

    def __init__(
        self,
        server_url: str,
        tenant: str,
        data_dir: Path,
        *,
        root_path: Path | None = None,
        refresh_interval: float = 300.0,
        timeout: int = 30,
    ) -> None:
        base = server_url.rstrip("/")
        self.metadata_url = f"{base}/tuf/v1/{tenant}/metadata/"
        self.targets_url = f"{base}/tuf/v1/{tenant}/targets/"
        self.metadata_dir = data_dir / "tuf" / tenant
        self.root_path = root_path
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self._updater: Updater | None = None
        self._refreshed_at = 0.0
        self._lock = threading.Lock()

    def verify(self, tuf_target: str, path: Path) -> None:
        """Check that ``path`` has the length and hashes the signed metadata gives ``tuf_target``;
        raise ``UntrustedTarget`` (or ``TrustUnavailable``) otherwise."""
        from tuf.api.exceptions import LengthOrHashMismatchError

        with self._lock:
            fresh = self._ensure_fresh(force=False)
            info = self._targetinfo(tuf_target)
            if info is None and not fresh:
                # Metadata from a while ago may predate this release: look once more before refusing.
                self._ensure_fresh(force=True)
                info = self._targetinfo(tuf_target)
        if info is None:
            raise UntrustedTarget(f"{tuf_target}: not a target in the signed TUF metadata")
        try:
            with path.open("rb") as handle:
                info.verify_length_and_hashes(handle)
        except LengthOrHashMismatchError as error:
            raise UntrustedTarget(
                f"{tuf_target}: {path.name} does not match the signed metadata: {error}"
            ) from error
        except OSError as error:
            raise UntrustedTarget(f"{tuf_target}: cannot read {path}: {error}") from error

    # -- internals ------------------------------------------------------------------------------

    def _ensure_fresh(self, *, force: bool) -> bool:
        """Refresh the metadata when it is older than the interval (or when forced); return
        whether it was refreshed now."""
        recent = time.monotonic() - self._refreshed_at < self.refresh_interval
        if not force and self._updater is not None and recent:
            return False
        from tuf.api import exceptions as tuf_errors
        from tuf.ngclient import Updater, Urllib3Fetcher

        # A failed refresh must not leave the previous view in use: it may be what an attacker
        # wants the device to keep believing (frozen metadata).
        self._updater = None
        anchor = self._anchor()
        try:
            updater = Updater(
                metadata_dir=str(self.metadata_dir),
                metadata_base_url=self.metadata_url,
                target_base_url=self.targets_url,
                fetcher=Urllib3Fetcher(
                    socket_timeout=self.timeout, app_user_agent=f"fleetlift-agent/{__version__}"
                ),
                bootstrap=anchor,
            )
            # An Updater refreshes once in its life; a new one per refresh starts from the roots
            # cached in metadata_dir, so it costs no extra round trips for root.
            updater.refresh()
        except tuf_errors.DownloadLengthMismatchError as error:
            raise UntrustedTarget(f"TUF metadata rejected: {error}") from error
        except tuf_errors.DownloadError as error:
            raise TrustUnavailable(f"cannot fetch TUF metadata from {self.metadata_url}: {error}") from error
        except tuf_errors.RepositoryError as error:
            raise UntrustedTarget(f"TUF metadata rejected ({type(error).__name__}): {error}") from error
        except OSError as error:
            raise TrustUnavailable(f"cannot store TUF metadata in {self.metadata_dir}: {error}") from error
        self._updater = updater
        self._refreshed_at = time.monotonic()
        return True

    def _targetinfo(self, tuf_target: str) -> TargetFile | None:
        from tuf.api import exceptions as tuf_errors

        assert self._updater is not None
        try:
            return self._updater.get_targetinfo(tuf_target)
        except tuf_errors.DownloadError as error:  # delegated metadata is fetched on demand
            self._updater = None
            raise TrustUnavailable(f"cannot fetch TUF metadata: {error}") from error
        except tuf_errors.RepositoryError as error:
            self._updater = None
            raise UntrustedTarget(f"TUF metadata rejected ({type(error).__name__}): {error}") from error

    def _anchor(self) -> bytes:
        """The root this device trusts from the start: shipped, or kept from first use."""
        if self.root_path is not None:
            try:
                return self.root_path.read_bytes()
            except OSError as error:
                raise UntrustedTarget(
                    f"cannot read the shipped TUF root {self.root_path}: {error}"
                ) from error
        kept = self.metadata_dir / ANCHOR_NAME
        try:
            return kept.read_bytes()
        except FileNotFoundError:
            pass
        data = self._fetch_first_root()
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        temporary = kept.with_name(kept.name + ".tmp")
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, kept)
        return data

    def _fetch_first_root(self) -> bytes:
        url = f"{self.metadata_url}1.root.json"
        request = urllib.request.Request(url, headers={"User-Agent": f"fleetlift-agent/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data: bytes = response.read(_ROOT_MAX_LENGTH + 1)
        except (urllib.error.URLError, OSError) as error:
            raise TrustUnavailable(f"cannot fetch the first TUF root from {url}: {error}") from error
        if len(data) > _ROOT_MAX_LENGTH:
            raise UntrustedTarget(f"the first TUF root at {url} is larger than {_ROOT_MAX_LENGTH} bytes")
        try:
            signed = json.loads(data)["signed"]
            valid = signed["_type"] == "root" and signed["version"] == 1
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            # Only a well-formed version 1 is kept; the Updater then checks its self-signatures.
            raise UntrustedTarget(f"{url} is not a TUF root of version 1")
        return data
