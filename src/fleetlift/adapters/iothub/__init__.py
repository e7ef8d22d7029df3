"""Azure IoT Hub's service REST API: the client, its credentials and its errors."""

from fleetlift.adapters.iothub.auth import (
    ENTRA_SCOPE,
    AuthProvider,
    ConnectionString,
    EntraTokenProvider,
    Renewable,
    SasTokenProvider,
    sas_token,
)
from fleetlift.adapters.iothub.client import (
    API_VERSION,
    Backoff,
    ConfigOperationLimiter,
    IotHubClient,
    MethodResult,
)
from fleetlift.adapters.iothub.errors import (
    DeviceNotOnline,
    IotHubBadGateway,
    IotHubConflict,
    IotHubError,
    IotHubInvalidInput,
    IotHubNotFound,
    IotHubPreconditionFailed,
    IotHubQuotaExceeded,
    IotHubUnavailable,
    Throttled,
    error_from_response,
)

__all__ = [
    "API_VERSION",
    "ENTRA_SCOPE",
    "AuthProvider",
    "Backoff",
    "ConfigOperationLimiter",
    "ConnectionString",
    "DeviceNotOnline",
    "EntraTokenProvider",
    "IotHubBadGateway",
    "IotHubClient",
    "IotHubConflict",
    "IotHubError",
    "IotHubInvalidInput",
    "IotHubNotFound",
    "IotHubPreconditionFailed",
    "IotHubQuotaExceeded",
    "IotHubUnavailable",
    "MethodResult",
    "Renewable",
    "SasTokenProvider",
    "Throttled",
    "error_from_response",
    "sas_token",
]
