"""The public names of rsc_async: what they are, and that they stay honest."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

import rsc_async
from rsc_async import RSCError

PUBLIC_API = [
    "RedisStreamClient",
    "RetryConfig",
    "LBSInfo",
    "LBSMessage",
    "NotificationType",
    "Notification",
    "StreamAdded",
    "StreamExpired",
    "StreamDisowned",
    "StreamTerminated",
    "MetricsRecorder",
    "add_stream",
    "RSCError",
    "AlreadyClaimedError",
    "DataStreamNotFoundError",
    "ExistingKeyspaceConfigError",
    "InvalidLBSMessageError",
    "LockLostError",
]

ERRORS = [
    name
    for name in rsc_async.__all__
    if inspect.isclass(getattr(rsc_async, name))
    and issubclass(getattr(rsc_async, name), BaseException)
]


def _isort_key(name: str) -> tuple[int, str]:
    # Constants, then classes, then functions: the order ruff's RUF022 keeps.
    if name.isupper():
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def test_all_is_sorted() -> None:
    """__all__ lists constants, then classes, then functions, each alphabetical."""
    names = list(rsc_async.__all__)

    assert sorted(names, key=_isort_key) == names


def test_all_has_no_duplicates() -> None:
    """Each public name is listed once."""
    assert len(set(rsc_async.__all__)) == len(rsc_async.__all__)


@pytest.mark.parametrize("name", rsc_async.__all__)
def test_every_name_in_all_is_importable(name: str) -> None:
    """``from rsc_async import <name>`` works for every listed name."""
    module = importlib.import_module("rsc_async")

    assert hasattr(module, name)
    assert getattr(module, name) is not None


def test_star_import_gives_exactly_all() -> None:
    """A star import brings every name of __all__ and nothing else."""
    namespace: dict[str, object] = {}
    exec("from rsc_async import *", namespace)
    namespace.pop("__builtins__")

    assert set(rsc_async.__all__) == set(namespace)


def test_all_lists_every_public_name_of_the_package() -> None:
    """No public name is defined in the package without being in __all__."""
    public = {
        name
        for name, value in vars(rsc_async).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }

    assert public == set(rsc_async.__all__)


@pytest.mark.parametrize("name", PUBLIC_API)
def test_documented_public_name_is_exported(name: str) -> None:
    """Each name of the documented public API is in __all__."""
    assert name in rsc_async.__all__


def test_every_error_is_an_rsc_error() -> None:
    """One root error: catching RSCError catches anything the library raises."""
    not_rsc = [
        name for name in ERRORS if not issubclass(getattr(rsc_async, name), RSCError)
    ]

    assert [] == not_rsc
    assert {
        "RSCError",
        "AlreadyClaimedError",
        "DataStreamNotFoundError",
        "ExistingKeyspaceConfigError",
        "InvalidLBSMessageError",
        "LockLostError",
    } <= set(ERRORS)


def test_every_exported_error_is_named_error() -> None:
    """Exception classes are named *Error, and *Error names are exceptions."""
    named_error = [name for name in rsc_async.__all__ if name.endswith("Error")]

    assert sorted(named_error) == sorted(ERRORS)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        ("InvalidOptionError", ValueError),
        ("InvalidLBSMessageError", ValueError),
        ("DataStreamNotFoundError", KeyError),
        ("ExistingKeyspaceConfigError", rsc_async.KeyspaceConfigError),
    ],
)
def test_errors_also_subclass_the_builtin_they_refine(
    error: str, builtin: type[Exception]
) -> None:
    """Errors that refine a builtin meaning can be caught by that builtin."""
    assert issubclass(getattr(rsc_async, error), builtin)


def test_data_stream_not_found_error_message_is_not_quoted_twice() -> None:
    """Unlike a bare KeyError, the message reads as one sentence."""
    error = rsc_async.DataStreamNotFoundError("session-42")

    assert "data stream 'session-42' is not held by this consumer" == str(error)


def test_package_ships_py_typed() -> None:
    """The package is marked as typed for type checkers (PEP 561)."""
    package_dir = Path(rsc_async.__file__).parent

    assert (package_dir / "py.typed").is_file()
