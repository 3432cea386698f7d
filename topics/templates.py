"""The in-memory view of the templates topic: versions, labels, and resolution.

The store is fed records in topic order (:meth:`TemplateStore.apply`) and answers
``resolve("summarize@production")`` with the immutable version the label points at.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from schemas import ErrorCode, LabelRecord, PromptmillError, Template, TemplateRef, decode

log = logging.getLogger(__name__)


class UnknownTemplate(PromptmillError):
    code = ErrorCode.UNKNOWN_TEMPLATE


class TemplateStore:
    """Every known template version and label."""

    def __init__(self) -> None:
        self._versions: dict[str, dict[int, Template]] = {}
        self._labels: dict[str, dict[str, int]] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record of the templates topic (a ``None`` value is a tombstone)."""
        text = key.decode() if key else ""
        kind, _, rest = text.partition(":")
        name, _, selector = rest.partition(":")
        if value is None:
            if kind == "label":
                self._labels.get(name, {}).pop(selector, None)
            elif kind == "version" and selector.isdigit():
                self._versions.get(name, {}).pop(int(selector), None)
            return
        try:
            if kind == "label":
                label = decode(value, LabelRecord)
                self._labels.setdefault(label.name, {})[label.label] = label.version
            elif kind == "version":
                template = decode(value, Template)
                self._versions.setdefault(template.name, {})[template.version] = template
        except ValidationError as exc:
            log.warning("ignoring bad templates record %r: %s", text, exc.errors()[0]["msg"])

    def resolve(self, ref: TemplateRef | str) -> Template:
        """The version ``ref`` names; raises :class:`UnknownTemplate` naming what is missing."""
        if isinstance(ref, str):
            ref = TemplateRef.parse(ref)
        versions = self._versions.get(ref.name)
        if not versions:
            raise UnknownTemplate(f"unknown template {ref.name!r}")
        version = ref.version
        if version is None:
            labels = self._labels.get(ref.name, {})
            if ref.label not in labels:
                known = ", ".join(sorted(labels)) or "none"
                raise UnknownTemplate(
                    f"template {ref.name!r} has no label {ref.label!r} (labels: {known}; "
                    f"versions: {', '.join(map(str, sorted(versions)))})"
                )
            version = labels[ref.label or ""]
        if version not in versions:
            raise UnknownTemplate(f"template {ref.name!r} has no version {version}")
        return versions[version]

    def names(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[Template]:
        return [v for _, v in sorted(self._versions.get(name, {}).items())]

    def labels(self, name: str) -> dict[str, int]:
        return dict(sorted(self._labels.get(name, {}).items()))

    def latest(self, name: str) -> Template | None:
        versions = self._versions.get(name)
        return versions[max(versions)] if versions else None
