"""Settings, validated once and passed into ``create_app``; nothing reads the environment at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class OidcIssuerSettings(BaseModel):
    """One external OpenID Connect issuer whose bearer tokens the management API accepts."""

    issuer: str
    audience: str | list[str]
    jwks_uri: str | None = None
    roles_claim: str = "roles"
    role_map: dict[str, str] = Field(default_factory=dict)
    tenant_claim: str | None = None


class Settings(BaseSettings):
    """Every knob of the server; ``FLEETLIFT_<NAME>`` in the environment sets it."""

    model_config = SettingsConfigDict(env_prefix="FLEETLIFT_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "INFO"

    local_issuer_enabled: bool = True
    local_issuer: str = "fleetlift-local"
    audience: str = "fleetlift"
    token_max_ttl_seconds: int = 24 * 3600
    oidc_issuers: list[OidcIssuerSettings] = Field(default_factory=list)
    jwks_cache_seconds: int = 3600

    artifact_store: Literal["filesystem", "azure_blob", "memory"] = "filesystem"
    artifact_dir: Path | None = None
    azure_blob_connection_string: SecretStr | None = None
    azure_blob_container: str = "fleetlift-artifacts"
    artifact_max_bytes: int = 64 * 1024**3
    download_link_ttl_seconds: int = 900
    link_signing_key: SecretStr | None = None
    secrets_key: SecretStr | None = None  # base64 of 32 bytes; seals stored registry passwords
    registry_auth_file: Path | None = None  # a Docker config.json with registry credentials
    registry_plain_http: list[str] = Field(default_factory=list)  # registries spoken to without TLS
    registry_timeout_seconds: float = 10.0
    # PEM public keys (cosign.pub) trusted to sign images; when any is set, every image needs a
    # valid signature from one of them.
    signature_key_files: list[Path] = Field(default_factory=list)
    # The vulnerability gate, on when a highest allowed severity is set: every image needs a Trivy
    # report attached (an OCI referrer) whose findings pass the policy.
    vulnerability_max_severity: Literal["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"] | None = None
    vulnerability_fixable_only: bool = False
    vulnerability_allowlist: list[str] = Field(default_factory=list)
    vulnerability_max_report_age_hours: float | None = None
    # Behind nginx: answer downloads with X-Accel-Redirect to this internal location and let nginx
    # send the file (filesystem store only). See docs/operations.md.
    accel_redirect_prefix: str | None = None

    device_token_ttl_seconds: int = 3600
    device_poll_interval_seconds: int = 60
    default_tenant: str = "default"
    max_request_bytes: int = 1024 * 1024
    page_size_default: int = 50
    page_size_max: int = 1000
    batch_max_devices: int = 10_000
    # The reconciler moves rollouts forward (docs/rollouts.md): a pass when a device reports an
    # outcome or an operator acts, and at least this often. Every replica may run it.
    reconciler_enabled: bool = True
    reconcile_interval_seconds: float = Field(default=1.0, gt=0)
    # How devices hear that a rollout released them: the built-in long poll (always on), or also a
    # "check now" message per device through an MQTT broker (docs/mqtt.md). The URL holds the
    # broker password: mqtt[s]://user:password@host[:port].
    device_channel: Literal["longpoll", "mqtt"] = "longpoll"
    mqtt_url: SecretStr | None = None
    mqtt_topic_prefix: str = "fleetlift"
    # Webhooks (docs/events.md): a background dispatcher POSTs signed events to subscriptions,
    # retrying failures with exponential backoff and full jitter (base * 2^n, capped).
    webhooks_enabled: bool = True
    webhook_timeout_seconds: float = 10.0
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_base_seconds: float = 10.0
    webhook_backoff_max_seconds: float = 3600.0
    webhook_concurrency: int = Field(default=4, ge=1)  # deliveries in flight per subscription and replica
    webhook_poll_interval_seconds: float = 1.0
    # A missing event number (a transaction still open, or rolled back) holds event streams and
    # webhook cursors back at most this long before they move past it.
    events_gap_timeout_seconds: float = 30.0
    # Events (and finished webhook deliveries) older than this are deleted, hourly, in batches; a
    # rollout of 100,000 devices writes about 400,000. Events a webhook has not been given yet are
    # kept whatever their age. 0 keeps everything.
    events_retention_days: int = Field(default=30, ge=0)
    events_prune_interval_seconds: float = Field(default=3600.0, gt=0)
    # Azure IoT Hub (docs/iothub.md): a background worker syncs each hub's devices, publishes edge
    # deployments as hub configurations and reads their status back; it has work only once a hub is
    # registered. Configuration status costs the hub's scarce configuration operations (about 20 a
    # minute), so it is read at most every ``iothub_status_interval_seconds`` per deployment.
    iothub_enabled: bool = True
    iothub_worker_interval_seconds: float = Field(default=10.0, gt=0)
    iothub_status_interval_seconds: float = Field(default=60.0, ge=0)
    # Hub host names must be Azure's (*.azure-devices.net) unless this is set (emulators, tests).
    iothub_allow_any_host: bool = False

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not (value.startswith("sqlite") or value.startswith("postgresql")):
            raise ValueError("FLEETLIFT_DATABASE_URL must be a sqlite:// or postgresql+psycopg:// URL")
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            # psycopg 3 is the driver we ship; spare users from knowing SQLAlchemy's driver suffix.
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("mqtt_topic_prefix")
    @classmethod
    def _plain_topic_prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            raise ValueError("FLEETLIFT_MQTT_TOPIC_PREFIX: topic levels without wildcards, e.g. fleetlift")
        return value

    @model_validator(mode="after")
    def _channel_configured(self) -> Settings:
        if self.device_channel == "mqtt":
            url = self.mqtt_url.get_secret_value() if self.mqtt_url is not None else ""
            if not url:
                raise ValueError(
                    "FLEETLIFT_DEVICE_CHANNEL=mqtt needs FLEETLIFT_MQTT_URL (mqtt://user:pw@host)"
                )
            if not url.startswith(("mqtt://", "mqtts://")):
                raise ValueError("FLEETLIFT_MQTT_URL must be an mqtt:// or mqtts:// URL")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to the embedded SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fleetlift.db').resolve()}"

    @property
    def local_issuer_key_path(self) -> Path:
        """Where the embedded issuer keeps its signing key."""
        return self.data_dir / "keys" / "local-issuer.pem"

    @property
    def artifact_root(self) -> Path:
        """Where the filesystem artifact store keeps blobs."""
        return self.artifact_dir or self.data_dir / "artifacts"

    def ensure_data_dir(self) -> None:
        """Create the data directory tree the embedded default writes into."""
        (self.data_dir / "keys").mkdir(parents=True, exist_ok=True)

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to print: the database password and secrets are masked."""
        values = self.model_dump(mode="json")
        url = self.resolved_database_url
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            credentials, host = rest.rsplit("@", 1)
            user = credentials.split(":", 1)[0]
            url = f"{scheme}://{user}:***@{host}" if ":" in credentials else url
        values["database_url"] = url
        return values
