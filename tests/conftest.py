"""Redis fixtures for the test suite, from the package's own pytest plugin."""

pytest_plugins = ["rsc_async.testing.pytest_plugin"]
