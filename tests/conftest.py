"""Shared pytest set-up. Each local stand-in brings its fixtures as a plugin module in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.kubernetes",
    "tests.fixtures.gcs",
    "tests.fixtures.slack",
    "tests.fixtures.claude",
    "tests.fixtures.github",
    "tests.fixtures.secrets",
]
