"""Drift tests: the README and DESIGN.md contracts stay true of the code (STYLE rule 22)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from app.cli import cli
from app.settings import SETTINGS, TABLE_MARKER, load_settings, settings_table, table_in

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_has_help_and_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for setting in SETTINGS:
        assert setting.help.strip(), f"setting {setting.name} has no help text"
        variable = f"SIGHTLINE_{setting.name.upper()}"
        assert f"`{variable}`" in readme, f"{variable} is missing from README.md"


def test_the_readme_settings_table_is_the_generated_one():
    block = table_in((ROOT / "README.md").read_text(encoding="utf-8"))
    assert block.startswith(TABLE_MARKER), f"README.md has no line {TABLE_MARKER!r}"
    assert block == settings_table(), ("README.md's settings table differs from app/settings.py; regenerate it with "
                                       "`python -m app.settings --write README.md`")
    assert block.count("\n") == len(SETTINGS) + 3  # the marker, the header, its rule and one row per setting


def test_readme_gives_exactly_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_cli_commands_and_flags_of_the_design_contract_exist():
    runner = CliRunner()
    expected = {
        "index": ["PATHS"],
        "status": ["--json"],
        "search": ["--k", "--json"],
        "ask": ["--video", "--json"],
        "serve": ["--host", "--port"],
    }
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0, top.output
    assert "--library" in top.output
    for command, flags in expected.items():
        result = runner.invoke(cli, [command, "--help"])
        assert result.exit_code == 0, result.output
        for flag in flags:
            assert flag in result.output, f"`sightline {command}` lacks {flag}:\n{result.output}"


def test_settings_read_environment_and_overrides():
    s = load_settings({"SIGHTLINE_LIBRARY": "/tmp/x", "SIGHTLINE_PORT": "9000", "SIGHTLINE_CAPTIONS": "yes"})
    assert (s.library, s.port, s.captions) == ("/tmp/x", 9000, True)
    s = load_settings({"SIGHTLINE_PORT": "9000"}, port=8000, library="/tmp/y")
    assert (s.port, s.library) == (8000, "/tmp/y")


def test_cli_starts_without_heavy_imports():
    code = "import app.cli, sys; print(sorted(m for m in ('torch', 'transformers', 'faster_whisper', 'cv2', 'rapidocr', 'gradio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "index" in out.stdout, out.stdout + out.stderr
