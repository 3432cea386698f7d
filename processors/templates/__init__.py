"""Rendering versioned templates: sandboxed, bounded in time, memory and output.

Import from the modules (``processors.templates.render`` and friends): this package is also
where the render child process starts, which should import no more than it needs. The
templates topic itself is materialised in :mod:`topics.templates`.
"""
