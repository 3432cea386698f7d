"""The JUnit XML schema that ``templates test --junit`` output is validated against.

The schema CI systems read (Jenkins' ``junit-10.xsd``, MIT-licensed, after Maven
Surefire's) ships in pytest's source distribution, which validates its own
``--junitxml`` output with it. It is fetched once with pip from the package index (the
pinned version below) and cached beside the Kafka jars.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PYTEST_SDIST_VERSION = "8.3.3"
MEMBER = f"pytest-{PYTEST_SDIST_VERSION}/testing/example_scripts/junit-10.xsd"


def ensure_junit_schema(cache_dir: Path) -> Path:
    """The cached ``junit-10.xsd`` (downloaded on first use)."""
    target = cache_dir / "junit-10.xsd"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"pytest=={PYTEST_SDIST_VERSION}",
                "-d",
                scratch,
            ],
            check=True,
            timeout=300,
        )
        [sdist] = Path(scratch).glob("pytest-*.tar.gz")
        with tarfile.open(sdist) as archive:
            source = archive.extractfile(MEMBER)
            if source is None:
                raise FileNotFoundError(f"{MEMBER} is not in {sdist.name}")
            partial = target.with_suffix(".part")
            partial.write_bytes(source.read())
            partial.replace(target)
    return target
