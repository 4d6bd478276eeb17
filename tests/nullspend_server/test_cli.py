"""The server's commands, run as a user runs them: the installed `nullspend` program."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

NULLSPEND = str(Path(sys.executable).with_name("nullspend"))
KEY = re.compile(r"ns_live_sk_[0-9a-f]{32}")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NULLSPEND, *args], capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(db: str, port: int) -> tuple[subprocess.Popen[str], str]:
    """Start `nullspend serve`; return the process and what it printed before it was ready."""
    process = subprocess.Popen(
        [NULLSPEND, "serve", "--db", db, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "Uvicorn running" in line or process.poll() is not None:
            break
    return process, "".join(lines)


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=30)


def test_serve_migrates_bootstraps_once_and_answers(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'nullspend.db'}"
    port = free_port()
    process, printed = serve(db, port)
    try:
        keys = KEY.findall(printed)
        assert len(keys) == 1, printed
        response = httpx.get(
            f"http://127.0.0.1:{port}/api/auth/introspect", headers={"X-NullSpend-Key": keys[0]}
        )
        assert response.json()["data"]["role"] == "admin"
    finally:
        stop(process)
    assert (tmp_path / "nullspend.db").exists()
    process, printed = serve(db, port)  # second start: same database, no new key printed
    stop(process)
    assert KEY.search(printed) is None


def test_keys_commands_without_a_server(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    created = run(
        "keys",
        "create",
        "--name",
        "ci-bot",
        "--role",
        "viewer",
        "--default-tags",
        '{"team": "ml"}',
        "--db",
        db,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert KEY.fullmatch(key)
    listed = run("keys", "list", "--db", db)
    assert key[:19] in listed.stdout
    assert key not in listed.stdout  # only the prefix is ever shown again
    key_id = listed.stdout.split()[0]
    assert run("keys", "revoke", key_id, "--db", db).returncode == 0
    assert "revoked" in run("keys", "list", "--db", db).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--name", "x", "--role", "owner"], "--role"),
        (["keys", "create", "--name", "x", "--default-tags", "{bad"], "not JSON"),
        (["keys", "create", "--name", "x", "--default-tags", '{"_ns_x": "1"}'], "reserved"),
        (["keys", "revoke", "key_missing"], "no API key"),
        # The API's bounds (PostgreSQL refused 201 characters with its SQL; SQLite kept them).
        (["keys", "create", "--name", ""], "--name"),
        (["keys", "create", "--name", "n" * 201], "at most 200 characters"),
    ],
)
def test_keys_command_errors(tmp_path: Path, args: list[str], message: str) -> None:
    done = run(*args, "--db", f"sqlite:///{tmp_path / 'e.db'}")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_migrate_command(tmp_path: Path) -> None:
    done = run("migrate", "--db", f"sqlite:///{tmp_path / 'm.db'}")
    assert done.returncode == 0
    assert "up to date" in done.stdout


@pytest.mark.parametrize(
    "url",
    [
        "mysql://x/y",
        "not a url",
        "postgresql+psycopg://u@127.0.0.1:1/x",
        "postgresql+psycopg://u:hunter2@127.0.0.1:1/x",
    ],
)
@pytest.mark.parametrize("command", [["migrate"], ["keys", "list"]])
def test_unusable_database_is_a_clear_error(url: str, command: list[str]) -> None:
    done = run(*command, "--db", url)
    assert done.returncode == 2
    assert "cannot use the database" in done.stderr
    assert "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr  # the URL's password was printed, into the logs


@pytest.mark.parametrize(
    ("args", "environment", "message"),
    [
        (["keys", "list"], {"NULLSPEND_PORT": "abc"}, "NULLSPEND_PORT='abc'"),
        (["migrate"], {"NULLSPEND_RATE_LIMIT_PER_MINUTE": "many"}, "NULLSPEND_RATE_LIMIT"),
        (["migrate"], {"NULLSPEND_UPSTREAM_ALLOWLIST": "not json"}, "upstream_allowlist"),
        (["serve", "--db", "sqlite:///s.db"], {"NULLSPEND_PORT": "99999"}, "not 99999"),
        (["serve", "--db", "sqlite:///s.db", "--port", "99999"], {}, "--port"),
    ],
)
def test_a_bad_setting_is_a_clear_error(
    tmp_path: Path, args: list[str], environment: dict[str, str], message: str
) -> None:
    """A setting in the environment that could not be read was a pydantic traceback from every
    command; a port above 65535 was taken modulo 65536 (99999 listened on 34463 while the
    server said it ran on 99999)."""
    done = subprocess.run(
        [NULLSPEND, *args],  # the database in tmp_path: ./nullspend.db unless --db
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **environment},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
