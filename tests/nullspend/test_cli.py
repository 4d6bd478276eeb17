import json
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import nullspend.cli
from nullspend.cli import app, load_plugins

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


def run_cost(*args: str, stdin: bytes | None = None) -> dict[str, object]:
    result = runner.invoke(app, ["cost", *args], input=stdin)
    assert result.exit_code == 0, result.output
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


@pytest.mark.parametrize(
    "path", sorted(FIXTURES.glob("*.json")) + sorted(FIXTURES.glob("*.sse")), ids=lambda p: p.name
)
def test_cost_of_every_fixture(path: Path) -> None:
    """Every saved response is detected, read and priced (or reported without usage)."""
    out = (
        run_cost(str(path), "--model", "gemini-2.5-flash")
        if "gemini" in path.name
        else run_cost(str(path))
    )
    assert out["provider"] in {"openai", "anthropic", "google"}
    assert out["streamed"] is (path.suffix == ".sse")
    if out["usage"] is None:
        assert out["no_usage"] is True
        return
    cost = out["cost"]
    assert isinstance(cost, dict)
    assert cost["unpriced"] is False
    assert cost["total_microdollars"] == sum(
        part["microdollars"] for part in cost["breakdown"].values()
    )


def test_cost_reads_stdin_and_reports_an_unpriced_model() -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "acme-private-1",
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    out = run_cost("-", stdin=json.dumps(body).encode())
    assert out["model"] == "acme-private-1"
    assert out["resolved_model"] is None
    assert out["cost"] == {"total_microdollars": None, "unpriced": True}


def test_cost_with_forced_format_and_model() -> None:
    body = {"usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 100}}
    out = run_cost(
        "-",
        "--format",
        "gemini.generate_content",
        "--model",
        "gemini-2.5-pro",
        stdin=json.dumps(body).encode(),
    )
    assert out["resolved_model"] == "gemini-2.5-pro"
    assert out["cost"]["total_microdollars"] == 1000 * 1.25 + 100 * 10  # type: ignore[index]


def test_cost_prices_the_passes_billed_besides_the_answer() -> None:
    """Anthropic's compaction bills a pass its top-level usage leaves out (``usage.iterations``):
    ``nullspend cost`` printed 84,000 µ$ for the docs' example, billed 676,500."""
    body = {
        "type": "message",
        "model": "claude-sonnet-4-5",
        "usage": {
            "input_tokens": 23000,
            "output_tokens": 1000,
            "iterations": [
                {
                    "type": "compaction",
                    "input_tokens": 180000,
                    "output_tokens": 3500,
                    "cache_read_input_tokens": 0,
                    "cache_creation_input_tokens": 0,
                },
                {
                    "type": "message",
                    "input_tokens": 23000,
                    "output_tokens": 1000,
                    "cache_read_input_tokens": 0,
                    "cache_creation_input_tokens": 0,
                },
            ],
        },
    }
    out = run_cost("-", stdin=json.dumps(body).encode())
    cost = out["cost"]
    assert isinstance(cost, dict)
    assert cost["total_microdollars"] == 23000 * 3 + 1000 * 15 + 180000 * 3 + 3500 * 15
    [compaction] = cost["passes"]
    assert compaction["cost"]["total_microdollars"] == 180000 * 3 + 3500 * 15


def test_cost_model_option_names_the_model_only_where_the_response_names_none() -> None:
    """``--model`` priced a response that names its model as another (a Claude answer at
    Gemini's prices) while printing the response's model; as its help says, it now names the
    model only where the response has none."""
    body = {
        "type": "message",
        "model": "claude-sonnet-4-5",
        "usage": {"input_tokens": 1000, "output_tokens": 100},
    }
    out = run_cost("-", "--model", "gemini-2.5-flash", stdin=json.dumps(body).encode())
    assert out["resolved_model"] == "claude-sonnet-4-5-20250929"
    assert out["cost"]["total_microdollars"] == 1000 * 3 + 100 * 15  # type: ignore[index]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["/nonexistent.json"], None, "No such file"),
        (["-"], b"not a response", "format"),
        (["-", "--format", "nope"], b"{}", "unknown format"),
        # Nested past the JSON parser's depth: a RecursionError traceback, exit 1.
        (["-"], b'{"object": "chat.completion", "x": ' + b"[" * 100_000, "nested too deeply"),
        (["-", "--format", "openai.chat"], b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (
            ["-"],
            b'{"object": "chat.completion", "usage": {"prompt_tokens": 1,'
            b' "completion_tokens": 1, "total_tokens": 2}}',
            "names no model",
        ),
    ],
)
def test_cost_errors_are_clear(args: list[str], stdin: bytes | None, message: str) -> None:
    result = runner.invoke(app, ["cost", *args], input=stdin)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_models_table_and_json() -> None:
    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0
    assert "claude-sonnet-4-20250514" in table.stdout
    (gpt_5,) = [row for row in table.stdout.splitlines() if "│ gpt-5 " in row]
    assert "priority: 2.5/20, flex: 0.625/5" in gpt_5  # input/output in each service tier
    listed = json.loads(runner.invoke(app, ["models", "--json", "--provider", "google"]).stdout)
    assert {entry["provider"] for entry in listed} == {"google"}
    assert any(entry["id"] == "gemini-2.5-pro" and entry["tiers"] for entry in listed)


def register_hello(target: typer.Typer) -> None:
    @target.command("hello")
    def hello() -> None:
        typer.echo("hello from a plugin")


def test_packages_add_commands_through_the_entry_point_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plugin = EntryPoint("hello", f"{__name__}:register_hello", nullspend.cli.ENTRY_POINT_GROUP)
    broken = EntryPoint("broken", "no_such_module:register", nullspend.cli.ENTRY_POINT_GROUP)
    monkeypatch.setattr(nullspend.cli, "entry_points", lambda group: [plugin, broken])
    target = typer.Typer()
    target.command("noop")(lambda: None)
    load_plugins(target)
    result = runner.invoke(target, ["hello"])
    assert result.stdout.strip() == "hello from a plugin"


def test_installed_console_script() -> None:
    done = subprocess.run(
        [Path(sys.executable).with_name("nullspend"), "models", "--json"],
        capture_output=True,
        check=True,
    )
    assert len(json.loads(done.stdout)) >= 60
