"""IncrementalAlterConfigs (Kafka API key 44), which aiokafka 0.14 does not ship.

aiokafka's ``alter_configs`` speaks the legacy AlterConfigs API (key 33). Its request
carries a resource's whole dynamic config and the broker *replaces* what it had: an
override an operator set with ``kafka-configs`` on a key the caller did not send (say
``min.insync.replicas`` or ``max.message.bytes``) silently goes back to the broker
default. IncrementalAlterConfigs (KIP-339, Kafka 2.3+) instead names one operation per
key (SET, DELETE, APPEND, SUBTRACT) and leaves every other key alone, so ``promptmill
topics apply`` can fix the keys the catalog owns and nothing else.

The structs below are declared with aiokafka's protocol primitives, the way
``aiokafka.protocol.admin`` declares AlterConfigs. Version 1 is version 0 in the
flexible encoding (compact strings and arrays, tagged fields); each connection picks the
highest version both it and the broker support. This is the only module that reaches
into aiokafka's admin internals (``_send_request``) to send a request aiokafka lacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any, TypeAlias

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResourceType
from aiokafka.errors import for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Array,
    Boolean,
    CompactArray,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    String,
    TaggedFields,
)

API_KEY = 44


class ConfigOp(IntEnum):
    """What IncrementalAlterConfigs does to one config key."""

    SET = 0
    DELETE = 1
    APPEND = 2
    SUBTRACT = 3


# (config name, operation, value); the value is None for DELETE
ConfigChange: TypeAlias = tuple[str, ConfigOp, str | None]
# (resource type, resource name, changes)
ResourceChanges: TypeAlias = tuple[int, str, Sequence[ConfigChange]]


class IncrementalAlterConfigsResponse_v0(Response):  # type: ignore[misc]
    API_KEY = API_KEY
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "responses",
            Array(
                ("error_code", Int16),
                ("error_message", String("utf-8")),
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
            ),
        ),
    )


class IncrementalAlterConfigsResponse_v1(Response):  # type: ignore[misc]
    API_KEY = API_KEY
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "responses",
            CompactArray(
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("resource_type", Int8),
                ("resource_name", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class IncrementalAlterConfigsRequest_v0(RequestStruct):  # type: ignore[misc]
    API_KEY = API_KEY
    API_VERSION = 0
    RESPONSE_TYPE = IncrementalAlterConfigsResponse_v0
    SCHEMA = Schema(
        (
            "resources",
            Array(
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
                (
                    "configs",
                    Array(
                        ("name", String("utf-8")),
                        ("config_operation", Int8),
                        ("value", String("utf-8")),
                    ),
                ),
            ),
        ),
        ("validate_only", Boolean),
    )


class IncrementalAlterConfigsRequest_v1(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = API_KEY
    API_VERSION = 1
    RESPONSE_TYPE = IncrementalAlterConfigsResponse_v1
    SCHEMA = Schema(
        (
            "resources",
            CompactArray(
                ("resource_type", Int8),
                ("resource_name", CompactString("utf-8")),
                (
                    "configs",
                    CompactArray(
                        ("name", CompactString("utf-8")),
                        ("config_operation", Int8),
                        ("value", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("validate_only", Boolean),
        ("tags", TaggedFields),
    )


IncrementalAlterConfigsRequestStruct: TypeAlias = (
    IncrementalAlterConfigsRequest_v0 | IncrementalAlterConfigsRequest_v1
)


class IncrementalAlterConfigsRequest(Request[IncrementalAlterConfigsRequestStruct]):  # type: ignore[misc]
    """Builds the version of the request the connection negotiated."""

    API_KEY = API_KEY

    def __init__(self, resources: Sequence[ResourceChanges], validate_only: bool = False) -> None:
        self._resources = resources
        self._validate_only = validate_only

    def build(self, request_struct_class: type[Any]) -> Any:
        if request_struct_class.FLEXIBLE_VERSION:
            resources: list[tuple[Any, ...]] = [
                (kind, name, [(key, int(op), value, {}) for key, op, value in changes], {})
                for kind, name, changes in self._resources
            ]
            return request_struct_class(resources, self._validate_only, {})
        resources = [
            (kind, name, [(key, int(op), value) for key, op, value in changes])
            for kind, name, changes in self._resources
        ]
        return request_struct_class(resources, self._validate_only)


async def set_topic_configs(
    admin: AIOKafkaAdminClient, topic: str, values: Mapping[str, str]
) -> None:
    """SET ``values`` on ``topic``, leaving every other dynamic config of it as it is.

    Raises ``RuntimeError`` naming the topic and the broker's message when it refuses.
    """
    if not values:
        return
    changes = [(key, ConfigOp.SET, value) for key, value in values.items()]
    request = IncrementalAlterConfigsRequest([(ConfigResourceType.TOPIC, topic, changes)])
    response = await admin._send_request(request)
    for resource in response.to_object()["responses"]:
        code: int = resource["error_code"]
        if code != 0:
            message = resource["error_message"] or for_code(code).__name__
            raise RuntimeError(f"cannot alter configs of topic {topic}: {message} (error {code})")
