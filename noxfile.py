"""Nox sessions: tests on each Python found, lint, typecheck and benchmarks."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.error_on_missing_interpreters = False
nox.options.sessions = ["tests", "lint", "typecheck"]

ROOT = Path(__file__).parent
LINT_PATHS = [
    name
    for name in ("rsc_async", "tests", "examples", "benchmarks", "noxfile.py")
    if (ROOT / name).exists()
]


@nox.session(python=["3.10", "3.11", "3.12", "3.13", "3.14"])
def tests(session: nox.Session) -> None:
    """Run the test suite; arguments after ``--`` go to pytest."""
    session.install(".[test,embedded]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check lint rules and formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package and tests with mypy --strict."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "rsc_async", "tests")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into build/docs, failing on any warning."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs)
