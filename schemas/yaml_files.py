"""YAML files validated by a pydantic model, with errors that name file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from schemas.errors import PromptmillError

M = TypeVar("M", bound=BaseModel)


class YamlFileError(PromptmillError):
    """A YAML file that cannot be loaded; the message names file, line and field."""


def load_yaml(path: Path, what: str) -> tuple[Any, dict[str, Any]]:
    """(the node tree, for lines; the data) of a YAML file that must hold a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlFileError(f"{path}: cannot read {what}: {exc.strerror}") from None
    return parse_yaml(text, path, what)


def parse_yaml(text: str, origin: Path | str, what: str) -> tuple[Any, dict[str, Any]]:
    """:func:`load_yaml` of ``text`` that came from ``origin`` (named in errors)."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", exc)
        raise YamlFileError(f"{origin}{line}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise YamlFileError(f"{origin}:1: {what} must be a YAML mapping")
    return node, data


def validate_yaml(path: Path | str, node: Any, data: dict[str, Any], model: type[M]) -> M:
    """``data`` as ``model``; the first error as ``file:line: field F: message``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        field = ".".join(str(p) for p in loc) or "(file)"
        message = str(err["msg"]).removeprefix("Value error, ")
        raise YamlFileError(f"{path}:{line_of(node, loc)}: field {field}: {message}") from None


def line_of(node: Any, loc: list[Any]) -> int:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == part]
            if not match:
                return line
            node = match[0]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line
