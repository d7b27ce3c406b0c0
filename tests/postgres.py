"""A fresh PostgreSQL database per test, on the test server, dropped after.

The server: `BLIPQ_TEST_POSTGRES_URL` (a postgresql:// URL) if set, else the machine's own on 127.0.0.1:5432
as `postgres` (trust auth; `bash .ci/run` starts Debian's postgresql where none answers). Tests never touch a database
they did not create.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    """The test server, as a user that may create, alter and drop databases."""
    return os.environ.get("BLIPQ_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL)


@contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database; dropped (whoever is still connected) when the block ends."""
    admin = admin_url()
    name = f"blipq_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"no PostgreSQL for the tests at {admin} ({exc}): start one (bash .ci/run starts Debian's postgresql), "
            "or set BLIPQ_TEST_POSTGRES_URL"
        )
    try:
        yield urlsplit(admin)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as connection:
            connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
