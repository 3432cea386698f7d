"""The wire contract of promptmill.

Every record that crosses Kafka is one of the pydantic models exported here, encoded
as JSON with orjson by :mod:`schemas.codec`, and carries ``schema_version`` so that a
consumer in any language can tell what it is reading.
"""

from schemas.batches import BatchDone, BatchManifest
from schemas.codec import decode, encode
from schemas.errors import ErrorCode, PromptmillError
from schemas.headers import Header
from schemas.jobs import ChatMessage, PromptJob, TemplateRef
from schemas.moderation import Verdict
from schemas.reports import WindowReport
from schemas.results import Completion, Failure, SourcePosition, Stage, TerminalRecord, Usage
from schemas.templates import CatalogRevision, LabelRecord, Template

__all__ = [
    "BatchDone",
    "BatchManifest",
    "CatalogRevision",
    "ChatMessage",
    "Completion",
    "ErrorCode",
    "Failure",
    "Header",
    "LabelRecord",
    "PromptJob",
    "PromptmillError",
    "SourcePosition",
    "Stage",
    "Template",
    "TemplateRef",
    "TerminalRecord",
    "Usage",
    "Verdict",
    "WindowReport",
    "decode",
    "encode",
]
