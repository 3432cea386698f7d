"""Command implementations behind :mod:`promptmill.cli` (thin: logic lives in the packages)."""
