"""Shared by every test tier.

Hypothesis is imported here, at collection, on purpose: its pytest plugin otherwise imports
it at the very end of a session that used none of its tests, and CPython 3.11.7's
``ast.parse`` (pytest rewrites the module's asserts) can then fail with "AST constructor
recursion depth mismatch" (CPython gh-106905, fixed in 3.11.8), which crashes pytest after
every test passed.
"""

import hypothesis  # noqa: F401
