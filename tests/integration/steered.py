"""A template whose every answer the simulator is told (``[[sim:reply=...]]``): versions
that pass or fail given checks, for the tests of ``eval`` and the evals worker."""

from __future__ import annotations

from pathlib import Path

SAY = """\
name: say
params: {{temperature: 0, max_tokens: 16}}
variables: [word]
messages:
  - role: user
    content: "Say {{{{ word }}}}. [[sim:reply={reply}]]"
"""


def say_version(directory: Path, reply: str, tests: str | None = None) -> Path:
    """``directory`` (made) with ``say.yaml`` answering ``reply`` (``{{ word }}`` allowed),
    and ``say.tests.yaml`` holding ``tests`` if given."""
    directory.mkdir()
    (directory / "say.yaml").write_text(SAY.format(reply=reply))
    if tests is not None:
        (directory / "say.tests.yaml").write_text(tests)
    return directory
