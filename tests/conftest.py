"""Shared pytest configuration.

The server fixtures live in ``tests/support``; each starts its server on 127.0.0.1 on a
free port, proves that the server enforces preconditions, and stops it at the end.
"""

pytest_plugins = [
    "tests.support.s3_servers",
    "tests.support.gcs_servers",
]
