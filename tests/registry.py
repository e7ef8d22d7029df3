"""A real OCI registry (Debian's docker-registry) on loopback, plain, with htpasswd basic auth, or
with token auth from a small token service of our own; images pushed with skopeo."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bcrypt
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .ports import free_port

USER, PASSWORD = "alice", "s3cret-passw0rd"
SERVICE = "fleetlift-test-registry"


def unavailable_reason() -> str | None:
    for tool in ("docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make test installs it with apt-get)"
    return None


def _wait_for(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()}")
        time.sleep(0.05)
    raise RuntimeError("docker-registry did not start")


@dataclass
class TokenService:
    """Issues registry tokens (RS256 JWTs with an x5c chain) to callers with the right password."""

    url: str = ""
    requests: list[str] = field(default_factory=list)
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    certificate: x509.Certificate | None = None

    def make_certificate(self) -> bytes:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetlift test token issuer")])
        now = datetime.now(UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def token(self, subject: str, scopes: list[str]) -> str:
        assert self.certificate is not None
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = datetime.now(UTC)
        claims = {
            "iss": "fleetlift-test-issuer",
            "sub": subject,
            "aud": SERVICE,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()) - 5,
            "exp": int((now + timedelta(minutes=5)).timestamp()),
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        x5c = [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()]
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"x5c": x5c})


@contextmanager
def _token_service() -> Iterator[TokenService]:
    service = TokenService()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            from urllib.parse import parse_qs, urlparse

            query = parse_qs(urlparse(self.path).query)
            service.requests.append(self.path)
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            authenticated = self.headers.get("Authorization") == expected
            if self.headers.get("Authorization") and not authenticated:
                self.send_response(401)
                self.end_headers()
                return
            scopes = query.get("scope", []) if authenticated else []
            body = json.dumps(
                {"token": service.token(USER if authenticated else "", scopes), "expires_in": 300}
            )
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    service.url = f"http://127.0.0.1:{server.server_address[1]}/token"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Registry:
    host: str  # 127.0.0.1:port
    auth: str  # none, basic, token
    workdir: Path
    tokens: TokenService | None = None

    def push(self, layout: Path, tag: str, repository: str) -> None:
        """Copy the image at ``layout:tag`` to ``repository:tag`` with skopeo, digests preserved."""
        policy = self.workdir / "policy.json"
        policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        command = [
            "skopeo",
            "--policy",
            str(policy),
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]
        if self.auth != "none":
            command += ["--dest-creds", f"{USER}:{PASSWORD}"]
        command += [f"oci:{layout}:{tag}", f"docker://{self.host}/{repository}:{tag}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"skopeo copy failed: {result.stderr}")


@contextmanager
def run_registry(workdir: Path, auth: str = "none") -> Iterator[Registry]:
    """Start docker-registry on a free port with the given authentication."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = [
        "version: 0.1",
        "log:",
        "  level: error",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {workdir / 'data'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: fleetlift-test-secret",
    ]
    with _token_service() as tokens:
        if auth == "basic":
            hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
            (workdir / "htpasswd").write_text(f"{USER}:{hashed}\n")
            config += [
                "auth:",
                "  htpasswd:",
                "    realm: fleetlift-test",
                f"    path: {workdir / 'htpasswd'}",
            ]
        elif auth == "token":
            (workdir / "token-ca.pem").write_bytes(tokens.make_certificate())
            config += [
                "auth:",
                "  token:",
                f"    realm: {tokens.url}",
                f"    service: {SERVICE}",
                "    issuer: fleetlift-test-issuer",
                f"    rootcertbundle: {workdir / 'token-ca.pem'}",
            ]
        (workdir / "config.yml").write_text("\n".join(config) + "\n")
        log_path = workdir / "registry.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                ["docker-registry", "serve", str(workdir / "config.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for(port, process, log_path)
            yield Registry(f"127.0.0.1:{port}", auth, workdir, tokens if auth == "token" else None)
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def push_blob(host: str, repository: str, content: bytes) -> str:
    """Upload a blob through the Distribution API (monolithic upload); returns its digest."""
    import hashlib

    import httpx

    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    started = httpx.post(f"http://{host}/v2/{repository}/blobs/uploads/")
    started.raise_for_status()
    location = started.headers["Location"]
    url = location if location.startswith("http") else f"http://{host}{location}"
    separator = "&" if "?" in url else "?"
    httpx.put(
        f"{url}{separator}digest={digest}",
        content=content,
        headers={"Content-Type": "application/octet-stream"},
    ).raise_for_status()
    return digest


def push_manifest(host: str, repository: str, reference: str, content: bytes, media_type: str) -> str:
    """Put a manifest or index under a tag or digest; returns the digest the registry reports."""
    import httpx

    response = httpx.put(
        f"http://{host}/v2/{repository}/manifests/{reference}",
        content=content,
        headers={"Content-Type": media_type},
    )
    response.raise_for_status()
    return str(response.headers["Docker-Content-Digest"])
