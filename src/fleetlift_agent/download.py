"""The agent's downloader: resumable, verified, rate-limited and bounded on disk.

A file arrives as ``<dir>/<name>.part`` and only becomes ``<dir>/<name>`` once its size and
SHA-256 match what the server announced, so an installer never sees a partial or altered file.
Interruptions (a reset connection, a stall, a restarting server, a power cut) lose nothing: the
next attempt, or the next agent process, asks for the rest with ``Range`` and hashes the bytes
already on disk first, so the final digest covers the whole file. Standard library only: this
runs on small gateways.

Errors::

    DownloadError              anything that stops a download (the .part is kept unless corrupt)
    ├── CorruptDownload        size or SHA-256 differ from the announcement; nothing is kept
    ├── LinkExpired            the server refused the signed link (401/403): poll for a fresh one
    ├── DownloadStopped        should_stop() asked to stop; the .part is kept for later
    └── NoSpace                the disk or the download directory has no room for the file
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NoReturn, cast

from fleetlift_agent import __version__

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]

PART_SUFFIX = ".part"
META_SUFFIX = ".part.json"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
# Statuses worth another attempt: the server is overloaded or restarting, or a proxy timed out.
_TRANSIENT_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(Exception):
    """A download could not complete."""


class CorruptDownload(DownloadError):
    """The bytes received are not the file announced; the partial file was deleted."""


class LinkExpired(DownloadError):
    """The server refused the signed link (expired or invalid): ask the server for a fresh one."""


class DownloadStopped(DownloadError):
    """``should_stop()`` asked to stop; the partial file is kept and a later fetch resumes it."""


class NoSpace(DownloadError):
    """Not enough room on disk or in the download directory's quota."""


class _Interrupted(Exception):
    """One attempt failed in a way another attempt may fix (internal)."""


class _Restart(Exception):
    """The server will not continue our partial file: start again from byte zero (internal)."""


class TokenBucket:
    """A smooth rate limit shared by every download of one ``Downloader``.

    Bytes are debited after they are read; a negative balance is paid back by sleeping. Reads are
    kept to about 1/20 s worth of bytes so the flow stays even at small limits too."""

    def __init__(self, rate: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(1, rate // 20)
        self._clock = clock
        self._tokens = float(self.capacity)
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.capacity), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def consume(self, count: int) -> float:
        """Debit ``count`` bytes; return how long to sleep to stay under the rate."""
        with self._lock:
            self._refill()
            self._tokens -= count
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Downloader:
    """Fetches announced files into ``directory``.

    ``rate_limit``: bytes per second across all downloads (None: unlimited). ``max_bytes``: what the
    directory may hold in total. ``min_free_bytes``: free disk to leave for the rest of the device.
    ``timeout``: seconds for connecting and for each read; a stalled transfer counts as an
    interruption. ``retries``: attempts in a row without progress before giving up; an attempt
    that received bytes resets the count, so a flaky but moving link always finishes.
    ``base_url`` resolves the relative links the fleetlift server hands out."""

    def __init__(
        self,
        directory: Path,
        *,
        base_url: str | None = None,
        rate_limit: int | None = None,
        max_bytes: int | None = None,
        min_free_bytes: int = 64 * 1024 * 1024,
        timeout: float = 30.0,
        chunk_size: int = 64 * 1024,
        retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        fsync_bytes: int = 4 * 1024 * 1024,
        user_agent: str = f"fleetlift-agent/{__version__}",
    ) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.directory = directory
        self.base_url = base_url
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.fsync_bytes = fsync_bytes
        self.user_agent = user_agent
        self._bucket = TokenBucket(rate_limit) if rate_limit else None
        # Redirects are followed (a link may lead to blob storage); proxies come from the
        # environment as usual for urllib.
        self._opener = urllib.request.build_opener()
        directory.mkdir(parents=True, exist_ok=True)

    # -- public -------------------------------------------------------------------------------

    def path_for(self, name: str) -> Path:
        """Where a finished download of ``name`` lives."""
        return self.directory / _checked_name(name)

    def fetch(
        self,
        url: str,
        *,
        size: int,
        sha256: str,
        name: str,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> Path:
        """Download ``url`` to ``<dir>/<name>`` and return that path once size and SHA-256 match.

        Resumes a ``.part`` left by an earlier attempt or process. Raises ``LinkExpired``,
        ``CorruptDownload``, ``DownloadStopped``, ``NoSpace`` or ``DownloadError``."""
        final = self.path_for(name)
        sha256 = sha256.lower()
        if size < 0:
            raise ValueError("size must not be negative")
        if final.exists():
            # Downloaded before (say, by a process that died before installing): trust it only
            # after checking it again.
            if _file_digest(final) == (size, sha256):
                return final
            final.unlink()
        part = final.with_name(final.name + PART_SUFFIX)
        meta = final.with_name(final.name + META_SUFFIX)
        state = _PartState.open(part, meta, size=size, sha256=sha256, chunk_size=self.chunk_size)
        try:
            self._check_room(name, size, state.done)
            self._transfer(self._resolve(url), state, progress, should_stop)
            state.sync()
            got_size, got_sha = state.done, state.hasher.hexdigest()
        except CorruptDownload:
            state.close()
            _discard(part, meta)
            raise
        except BaseException:
            if state.done == 0:
                _discard(part, meta)  # nothing to resume: leave no empty litter behind
            raise
        finally:
            state.close()
        if (got_size, got_sha) != (size, sha256):
            _discard(part, meta)
            raise CorruptDownload(
                f"{name}: expected {size} bytes with SHA-256 {sha256}, "
                f"got {got_size} bytes with SHA-256 {got_sha}"
            )
        os.replace(part, final)
        with contextlib.suppress(FileNotFoundError):
            meta.unlink()
        _fsync_dir(self.directory)
        return final

    def prune(self, keep: set[str]) -> list[str]:
        """Delete every download (finished or partial) whose name is not in ``keep``; return the
        names deleted."""
        removed: list[str] = []
        for entry in self.directory.iterdir():
            if not entry.is_file():
                continue
            base = entry.name
            for suffix in (META_SUFFIX, PART_SUFFIX):
                if base.endswith(suffix):
                    base = base[: -len(suffix)]
                    break
            if base not in keep:
                entry.unlink(missing_ok=True)
                removed.append(entry.name)
        if removed:
            _fsync_dir(self.directory)
        return sorted(removed)

    # -- internals ------------------------------------------------------------------------------

    def _resolve(self, url: str) -> str:
        if urllib.parse.urlsplit(url).scheme in ("http", "https"):
            return url
        if self.base_url is None:
            raise DownloadError(f"relative download link {url!r} needs the downloader's base_url")
        return urllib.parse.urljoin(self.base_url.rstrip("/") + "/", url.lstrip("/"))

    def _check_room(self, name: str, size: int, done: int) -> None:
        remaining = size - done
        free = shutil.disk_usage(self.directory).free
        if free - remaining < self.min_free_bytes:
            raise NoSpace(
                f"{name}: {remaining} more bytes would leave {max(free - remaining, 0)} bytes free on disk, "
                f"under the minimum of {self.min_free_bytes}"
            )
        if self.max_bytes is not None:
            mine = {name, name + PART_SUFFIX, name + META_SUFFIX}
            others = sum(
                entry.stat().st_size
                for entry in self.directory.iterdir()
                if entry.is_file() and entry.name not in mine
            )
            if others + size > self.max_bytes:
                raise NoSpace(
                    f"{name}: {size} bytes next to the {others} already held would exceed the download "
                    f"directory's limit of {self.max_bytes} bytes"
                )

    def _transfer(
        self, url: str, state: _PartState, progress: Progress | None, should_stop: ShouldStop | None
    ) -> None:
        reporter = _Reporter(progress, state.size)
        reporter(state.done)
        failures = 0
        while state.done < state.size:
            _stop_if_asked(should_stop, state)
            before = state.done
            try:
                self._attempt(url, state, reporter, should_stop)
                if state.done >= state.size:
                    return
                raise _Interrupted(f"connection closed after byte {state.done} of {state.size}")
            except _Restart:
                state.restart()
                failures += 1
                last_error = "the server would not resume the partial file"
            except _Interrupted as error:
                state.sync()  # what arrived survives a power cut during the back-off
                failures = 0 if state.done > before else failures + 1
                last_error = str(error)
            if failures > self.retries:
                raise DownloadError(f"gave up after {failures} attempts without progress: {last_error}")
            self._sleep(self._delay(failures), should_stop, state)

    def _attempt(
        self, url: str, state: _PartState, reporter: _Reporter, should_stop: ShouldStop | None
    ) -> None:
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
        if state.done > 0:
            headers["Range"] = f"bytes={state.done}-"
            if state.validator:
                # The server sends the rest only if the file is still the one we started.
                headers["If-Range"] = state.validator
        request = urllib.request.Request(url, headers=headers)
        try:
            response = cast(http.client.HTTPResponse, self._opener.open(request, timeout=self.timeout))
        except urllib.error.HTTPError as error:
            error.close()
            self._refused(error.code)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise _Interrupted(f"cannot reach the server: {_reason(error)}") from error
        with response:
            self._receive(response, state, reporter, should_stop)

    def _refused(self, status: int) -> NoReturn:
        if status in (401, 403):
            raise LinkExpired(
                f"the server refused the download link ({status}): it has expired or is invalid"
            )
        if status == 416:
            raise _Restart
        if status in _TRANSIENT_STATUSES:
            raise _Interrupted(f"the server answered {status}")
        raise DownloadError(f"the server answered {status} for the download")

    def _receive(
        self,
        response: http.client.HTTPResponse,
        state: _PartState,
        reporter: _Reporter,
        should_stop: ShouldStop | None,
    ) -> None:
        status = response.status
        if status == 206:
            found = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if found is None or int(found.group(1)) != state.done:
                raise _Restart
            if found.group(3) != "*" and int(found.group(3)) != state.size:
                raise CorruptDownload(
                    f"expected {state.size} bytes, the server has {found.group(3)} bytes for this file"
                )
        elif status == 200:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != state.size:
                raise CorruptDownload(f"expected {state.size} bytes, the server sends {length} bytes")
            if state.done > 0:
                state.restart()  # the server ignored Range or the file changed: start over
        else:
            raise DownloadError(f"unexpected answer {status} to a download request")
        state.remember(response.headers.get("ETag") or response.headers.get("Last-Modified"))
        piece = self._bucket.capacity if self._bucket else self.chunk_size
        piece = min(piece, self.chunk_size)
        try:
            while state.done < state.size:
                _stop_if_asked(should_stop, state)
                data = response.read1(min(piece, state.size - state.done))
                if not data:
                    return  # closed early: the caller resumes
                state.write(data, self.fsync_bytes)
                reporter(state.done)
                if self._bucket is not None:
                    self._sleep(self._bucket.consume(len(data)), should_stop, state)
            if response.read1(1):
                # More than announced: the server is not serving the file we were promised.
                raise CorruptDownload(f"the server sent more than the expected {state.size} bytes")
        except (OSError, http.client.HTTPException) as error:
            raise _Interrupted(f"transfer interrupted: {_reason(error)}") from error

    def _delay(self, failures: int) -> float:
        # Exponential, with jitter so a fleet that lost the server at once does not return at once.
        ceiling = min(self.max_backoff, self.backoff * 2 ** max(failures - 1, 0))
        return random.uniform(ceiling / 2, ceiling)

    def _sleep(self, seconds: float, should_stop: ShouldStop | None, state: _PartState) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            _stop_if_asked(should_stop, state)
            time.sleep(min(left, 0.2))


class _PartState:
    """The partial file being written, its running hash and its validator (ETag/Last-Modified),
    which is kept next to it so a later process can send ``If-Range``."""

    def __init__(
        self, part: Path, meta: Path, handle: BinaryIO, size: int, sha256: str, validator: str | None
    ):
        self.part = part
        self.meta = meta
        self.handle = handle
        self.size = size
        self.sha256 = sha256
        self.validator = validator
        self.hasher = hashlib.sha256()
        self.done = 0
        self._unsynced = 0

    @classmethod
    def open(cls, part: Path, meta: Path, *, size: int, sha256: str, chunk_size: int) -> _PartState:
        validator: str | None = None
        try:
            document = json.loads(meta.read_text())
            if document.get("sha256") != sha256 or document.get("size") != size:
                _discard(part, meta)  # a partial file of some other content under the same name
            else:
                validator = document.get("validator")
        except (OSError, ValueError, AttributeError):
            pass
        with contextlib.suppress(FileNotFoundError):
            if part.stat().st_size > size:
                _discard(part, meta)
        handle = part.open("a+b")
        state = cls(part, meta, handle, size, sha256, validator)
        # Hash what is already there so the final digest covers the whole file.
        handle.seek(0)
        while block := handle.read(chunk_size):
            state.hasher.update(block)
            state.done += len(block)
        return state

    def remember(self, validator: str | None) -> None:
        if validator == self.validator:
            return
        self.validator = validator
        document = {"size": self.size, "sha256": self.sha256, "validator": validator}
        temporary = self.meta.with_name(self.meta.name + ".tmp")
        with temporary.open("w") as handle:
            json.dump(document, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.meta)

    def write(self, data: bytes, fsync_bytes: int) -> None:
        if self.done + len(data) > self.size:
            raise CorruptDownload(f"the server sent more than the expected {self.size} bytes")
        self.handle.write(data)
        self.hasher.update(data)
        self.done += len(data)
        self._unsynced += len(data)
        if self._unsynced >= fsync_bytes:
            self.sync()

    def sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self._unsynced = 0

    def restart(self) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.hasher = hashlib.sha256()
        self.done = 0
        self.validator = None

    def close(self) -> None:
        self.handle.close()


class _Reporter:
    """Calls ``progress`` at most once per percent or per second, so a slow callback (a report to
    the server) does not slow the transfer."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.step = max(total // 100, 1)
        self.last_done = -1
        self.last_time = 0.0

    def __call__(self, done: int) -> None:
        if self.progress is None or done == self.last_done:
            return
        now = time.monotonic()
        due = done - self.last_done >= self.step or now - self.last_time >= 1.0
        if self.last_done < 0 or done == self.total or due:
            self.last_done, self.last_time = done, now
            self.progress(done, self.total)


def _stop_if_asked(should_stop: ShouldStop | None, state: _PartState) -> None:
    if should_stop is not None and should_stop():
        state.sync()
        raise DownloadStopped(f"stopped at byte {state.done} of {state.size}; the partial file is kept")


def _checked_name(name: str) -> str:
    # The name becomes a path: nothing that could leave the directory or hide as a dotfile.
    if not name or name != os.path.basename(name) or name.startswith(".") or "\x00" in name:
        raise ValueError(f"not a plain file name: {name!r}")
    if name.endswith((PART_SUFFIX, META_SUFFIX)):
        raise ValueError(f"a download name must not end with {PART_SUFFIX!r}: {name!r}")
    return name


def _file_digest(path: Path) -> tuple[int, str]:
    hasher = hashlib.sha256()
    length = 0
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            hasher.update(block)
            length += len(block)
    return length, hasher.hexdigest()


def _discard(part: Path, meta: Path) -> None:
    part.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        return str(error.reason)
    return str(error) or type(error).__name__
