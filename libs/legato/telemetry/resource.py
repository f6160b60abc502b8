"""The OpenTelemetry resource every Legato process reports: who emitted a span or a metric."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.util.types import AttributeValue


def service_resource(service: str, *, instance_id: str | None = None) -> Resource:
    """``service.name=legato-<service>``, ``service.namespace=legato``, this replica's id, merged over
    whatever ``OTEL_RESOURCE_ATTRIBUTES`` adds (``deployment.environment``, ``k8s.pod.name``, …)."""
    attrs: dict[str, AttributeValue] = {"service.name": f"legato-{service}", "service.namespace": "legato"}
    if instance_id:
        attrs["service.instance.id"] = instance_id
    return Resource.create(attrs)
