"""The LangChain handler against a real server on each database."""

from tests.nullspend_server.conftest import (  # noqa: F401 (fixtures)
    database_url,
    pg_template,
    sqlite_template,
)
