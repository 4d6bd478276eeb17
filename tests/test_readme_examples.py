"""Every Python example in a package README runs as written."""

import re
import shlex
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from nullspend_server.db.migrate import migrate
from tests.fakes.upstream import run_fake_upstream
from tests.nullspend_server.conftest import start_server

ROOT = Path(__file__).parent.parent
READMES = sorted(ROOT.glob("packages/*/README.md"))
EXAMPLES = [
    pytest.param(block, id=f"{readme.parent.name}-{i}")
    for readme in READMES
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", readme.read_text(), re.S))
]


@pytest.mark.parametrize("code", EXAMPLES)
def test_readme_example_runs(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = None
    embedded = "LocalBudget" in code  # budgets declared in code: its reader has no server
    if "NullSpend" in code and not embedded:  # a client: give it a server, as its reader would
        url = f"sqlite:///{tmp_path / 'nullspend.db'}"
        migrate(url)
        server = start_server(url)
        monkeypatch.setenv("NULLSPEND_API_KEY", server.admin_key)
        monkeypatch.setenv("NULLSPEND_BASE_URL", server.base_url)
    else:
        monkeypatch.delenv("NULLSPEND_API_KEY", raising=False)
        monkeypatch.delenv("NULLSPEND_BASE_URL", raising=False)
    with ExitStack() as stack:
        if server is not None:
            stack.callback(server.stop)
        if ".openai(" in code or "ChatOpenAI(" in code:  # and a provider: the fake one
            fake_base, _ = stack.enter_context(run_fake_upstream())
            monkeypatch.setenv("OPENAI_BASE_URL", f"{fake_base}/v1")
            monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        exec(compile(code, "<README example>", "exec"), {})


def test_the_main_job_in_the_root_readme_runs() -> None:
    text = (ROOT / "README.md").read_text()
    command = re.search(r"`uv run (nullspend cost \S+)`", text)
    assert command is not None
    args = shlex.split(command.group(1))
    script = Path(sys.executable).with_name("nullspend")
    done = subprocess.run([script, *args[1:]], cwd=ROOT, capture_output=True, check=True)
    assert b'"total_microdollars"' in done.stdout
