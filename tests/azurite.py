"""Azurite, the Azure Storage emulator from npm, started on a free loopback port for a test run."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .ports import free_port

ROOT = Path(__file__).resolve().parents[1]
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
# Azurite's documented development account; the key is public and only opens the emulator.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def unavailable_reason() -> str | None:
    """Why Azurite cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not AZURITE.exists():
        return "Azurite is not installed: run `npm install` (make test does)"
    return None


@contextmanager
def azurite(workdir: Path) -> Iterator[str]:
    """Run Azurite's blob service; yields its connection string."""
    port = free_port()
    log = (workdir / "azurite.log").open("w")
    process = subprocess.Popen(
        [
            str(AZURITE),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(workdir),
            "--skipApiVersionCheck",
            "--disableProductStyleUrl",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None:
                raise RuntimeError(f"Azurite exited: {(workdir / 'azurite.log').read_text()}")
            time.sleep(0.1)
        else:
            raise RuntimeError("Azurite did not start within 30 s")
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            # Azurite waits for idle keep-alive connections on SIGTERM; nothing of it is needed now.
            process.kill()
            process.wait(timeout=10)
        log.close()
