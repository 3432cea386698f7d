"""Versioned templates: the registry materialised from the compacted topic, and rendering."""

from processors.templates.registry import TemplateRegistry
from processors.templates.render import Renderer
from processors.templates.store import TemplateStore, UnknownTemplate

__all__ = ["Renderer", "TemplateRegistry", "TemplateStore", "UnknownTemplate"]
