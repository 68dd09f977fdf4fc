"""The wheel is complete: built from the source tree it holds every module and data file of the four packages, and
installed into a fresh venv (no editable install, no source tree on the path) it runs `sightline --help` and a
search.

The fresh venv downloads nothing: the wheel goes in with --no-deps, and a .pth line puts this interpreter's
site-packages (the dependencies) behind the venv's own. A plain path line in a .pth does not run that folder's own
.pth files, so the editable install of the source tree there is not picked up: the venv's `app` is the wheel's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.library_builder import add_video

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "engine", "indexer", "storage")
# Read at run time from the installed package (the UI's JS and CSS, Alembic's revision template).
DATA_FILES = ("app/static/seek.js", "app/static/sightline.css", "storage/migrations/script.py.mako")


def _run(args: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


def _checkout_files() -> list[str]:
    """The files a checkout of this project holds (git's tracked files that exist and its untracked ones that are
    not ignored), relative to ROOT; without git, every file but caches and virtual environments."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        skip = ("__pycache__", ".venv", ".git", "build", ".pytest_cache")
        listed = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                  if not any(part in skip or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)]
    return sorted(p for p in set(listed) if p and (ROOT / p).is_file() and not p.endswith(".pyc"))


def _package_files(files: list[str]) -> set[str]:
    return {p for p in files if p.split("/", 1)[0] in PACKAGES}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (setuptools' build files stay out of the source tree)."""
    import shutil

    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    for rel in _checkout_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", work / "dist", src])
    (built,) = (work / "dist").glob("sightline-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (--no-deps) and this interpreter's site-packages behind its own."""
    folder = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", folder])
    python = folder / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (purelib / "sightline-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder


def _clean_env() -> dict:
    """This process's environment without PYTHONPATH (which would put the source tree first)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_every_package_folder_has_an_init():
    folders = {str(Path(p).parent) for p in _package_files(_checkout_files()) if p.endswith(".py")}
    missing = sorted(f for f in folders if not (ROOT / f / "__init__.py").is_file())
    assert not missing, f"package folders without __init__.py (left out of the wheel): {missing}"


def test_the_wheel_holds_every_module_and_data_file(wheel):
    names = [n for n in zipfile.ZipFile(wheel).namelist() if not n.endswith("/")]
    top = {n.split("/", 1)[0] for n in names}
    assert top - set(PACKAGES) == {"sightline-0.1.0.dist-info"}, sorted(top)
    in_wheel = {n for n in names if n.split("/", 1)[0] in PACKAGES}
    source = _package_files(_checkout_files())
    assert {"app/cli.py", "engine/loading.py", "storage/__init__.py"} <= source  # the listing itself worked
    assert set(DATA_FILES) <= source, "a data file the app reads is gone from the source tree"
    assert sorted(source - in_wheel) == [], "files of the source tree missing from the wheel"
    assert sorted(in_wheel - source) == [], "files in the wheel that the source tree does not have"
    entry = zipfile.ZipFile(wheel).read("sightline-0.1.0.dist-info/entry_points.txt").decode()
    assert "sightline = app.cli:main" in entry, entry


def test_the_installed_wheel_runs_help_and_a_search(venv, tmp_path):
    from app.services import Services
    from app.settings import load_settings

    cwd = tmp_path / "elsewhere"  # outside the repository: nothing is imported from the working directory
    cwd.mkdir()
    env = _clean_env()
    purelib = _run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=cwd, env=env).stdout.strip()
    where = _run([venv / "bin" / "python", "-c", "import app, engine, indexer, storage, storage.migrations.versions; "
                  "print('\\n'.join(m.__file__ for m in (app, engine, indexer, storage)))"], cwd=cwd, env=env)
    assert len(where.stdout.split()) == 4, where.stdout
    for path in where.stdout.split():
        assert path.startswith(purelib + os.sep), f"{path} is not the installed wheel's (in {purelib})"

    helped = _run([venv / "bin" / "sightline", "--help"], cwd=cwd, env=env)
    for command in ("index", "status", "search", "ask", "serve"):
        assert command in helped.stdout, helped.stdout

    services = Services(load_settings({}, library=str(tmp_path / "lib")))
    embed = services.text_embedder
    try:
        add_video(services.library, "/footage/market.mp4", 30.0, [
            (5.0, 8.0, "speech", "fresh bread and cheese at the morning market"),
        ], embed=embed, model=embed.model_name)
        harbour, _ = add_video(services.library, "/footage/harbour.mp4", 60.0, [
            (12.0, 15.5, "speech", "the fishermen pulled their boats up the beach before the storm"),
            (40.0, 43.0, "text", "HARBOUR MASTER OFFICE"),
        ], embed=embed, model=embed.model_name)
    finally:
        services.library.close()
    found = _run([venv / "bin" / "sightline", "--library", tmp_path / "lib", "search", "fishermen before the storm",
                  "--json"], cwd=cwd, env=env)
    hits = [json.loads(line) for line in found.stdout.splitlines() if line.strip()]
    assert hits, found.stdout + found.stderr
    first = hits[0]
    assert (first["video_id"], first["video"], first["modality"]) == (harbour, "/footage/harbour.mp4", "speech")
    assert (first["start"], first["end"]) == (12.0, 15.5) and "fishermen" in first["text"], first
