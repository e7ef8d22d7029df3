"""Every ORM table, imported in one place so metadata is complete for migrations and tests."""

from fleetlift.artifacts.models import Artifact, Blob, ReleaseArtifact
from fleetlift.audit.models import AuditEntry
from fleetlift.db import Base
from fleetlift.deployments.models import Deployment, DeploymentDevice
from fleetlift.devices.models import Device
from fleetlift.enrollment.models import EnrollmentToken
from fleetlift.events.models import Event, WebhookDelivery, WebhookSubscription
from fleetlift.iothub.models import IotHub, IotHubConfiguration
from fleetlift.notifications.models import DeploymentLog, Notification
from fleetlift.registries.models import RegistryCredential
from fleetlift.releases.models import Release
from fleetlift.tenants.models import Tenant

metadata = Base.metadata

__all__ = [
    "Artifact",
    "AuditEntry",
    "Blob",
    "Deployment",
    "DeploymentDevice",
    "DeploymentLog",
    "Device",
    "EnrollmentToken",
    "Event",
    "IotHub",
    "IotHubConfiguration",
    "Notification",
    "RegistryCredential",
    "Release",
    "ReleaseArtifact",
    "Tenant",
    "WebhookDelivery",
    "WebhookSubscription",
    "metadata",
]
