"""The documentation site builds without a warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BUILD_TIMEOUT = 300.0


def test_docs_build_strictly_without_warnings(tmp_path: Path) -> None:
    """``mkdocs build --strict`` succeeds and logs no warning."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")

    config = ["--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path)]
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", *config],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        cwd=ROOT,
    )

    warnings = [line for line in built.stderr.splitlines() if "WARNING" in line]
    assert (0, []) == (built.returncode, warnings), built.stderr
    assert (tmp_path / "api" / "index.html").is_file()
