"""Stale state and resource faults, through the real `sightline` command in subprocesses.

- A run SIGKILLed mid-file: `status` and the UI's progress call it interrupted (its process is gone, known from
  the indexing lock), and the next run, given other paths, resumes it.
- Ctrl-C (SIGINT) mid-file: a clean stop within seconds, no 100% bar, job "interrupted", no video "indexing".
- A full disk (a 20 MB tmpfs holding the library, filled with a ballast file), a read-only library (the same
  tmpfs remounted read-only) and an unreadable video (permission denied: as root, run with the capabilities
  that bypass file permissions dropped): one file fails with what to free or fix, the rest stay pending, the
  exit code says "aborted" or "some failed", and the next run picks everything up.
- `index` exit codes: 0 done or unchanged, 3 some failed, 4 aborted (README "Exit codes").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import gradio_media

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
EXIT_SOME_FAILED, EXIT_ABORTED = 3, 4


def _sightline(lib: Path, *args: str, timeout: float = 300, prefix: tuple[str, ...] = ()):
    return subprocess.run([*prefix, sys.executable, "-m", "app", "--library", str(lib), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _status_text(lib: Path, *extra: str) -> str:
    """`sightline status` in this process (click's CliRunner): no interpreter start per call."""
    from click.testing import CliRunner

    from app.cli import cli

    out = CliRunner().invoke(cli, ["--library", str(lib), "status", *extra], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return out.output


def _status(lib: Path) -> dict:
    return json.loads(_status_text(lib, "--json"))


def _rows(lib: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{lib / 'library.db'}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _no_trace(text: str) -> None:
    for bad in ("Traceback", "Internal error", "sqlalche.me", "OperationalError"):
        assert bad not in text, text[-3000:]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """8 s of moving test pattern with a tone: long enough to be stopped part way."""
    out = tmp_path_factory.mktemp("clip") / "pattern.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=10:duration=8", "-f", "lavfi", "-i", "sine=frequency=440:duration=8",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(out)], check=True)
    return out


def _start_and_wait(lib: Path, files: list[Path], stage_marks: int) -> subprocess.Popen:
    """Start `index` in a subprocess and return once it has committed `stage_marks` stage marks (mid-run)."""
    proc = subprocess.Popen([sys.executable, "-m", "app", "--library", str(lib), "index", *map(str, files)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            if _rows(lib, "select count(*) from stage_runs")[0][0] >= stage_marks:
                return proc
        except sqlite3.Error:
            continue
    proc.kill()
    raise AssertionError(f"the run ended before it could be stopped: {proc.communicate()[1][-2000:]}")


# --- liveness from the lock -----------------------------------------------------------------------------------


def test_indexing_holder_is_known_only_while_a_run_holds_the_lock(tmp_path):
    from storage import Library

    with Library.open(tmp_path / "lib") as library:
        assert library.indexing_holder() is None  # no run ever
        with library.indexing_lock():
            assert f"process {os.getpid()}" in library.indexing_holder()  # this process's own run counts
        assert library.indexing_holder() is None
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; from storage.library import Library\n"
             "with Library.open(sys.argv[1]).indexing_lock():\n    print('held', flush=True); time.sleep(120)",
             str(library.folder)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            assert f"process {holder.pid}" in library.indexing_holder()
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        assert library.indexing_holder() is None  # killed: the OS dropped the lock


# --- SIGKILL and SIGINT ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_run_shows_interrupted_and_the_next_run_resumes_it(tmp_path, clip, bikes_mp4):
    lib = tmp_path / "lib"
    proc = _start_and_wait(lib, [clip], stage_marks=1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert _rows(lib, "select status from jobs") == [("running",)]  # what the dead run left in the table

    report = _status(lib)
    assert report["last_job"]["status"] == "interrupted" and report["last_job"]["finished_at"], report["last_job"]
    assert [v["status"] for v in report["videos"]] == ["interrupted"], report["videos"]
    text = _status_text(lib)
    assert "interrupted — will resume" in text and "was interrupted at" in text, text

    from app.index_worker import IndexWorker
    from app.render import progress_html
    from storage import Library
    from storage import catalog

    with Library.open(lib) as library:
        p = catalog.progress(library)
        assert (p.running, p.status) == (False, "interrupted") and p.ended_at
        page = progress_html(p, catalog.videos(library), IndexWorker(None))
    assert "interrupted" in page and "will resume" in page and "estimating" not in page, page
    assert 'data-percent="100.0"' not in page, page

    resumed = _sightline(lib, "index", str(bikes_mp4))  # other paths: the interrupted file is taken up too
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed 1 file(s)" in resumed.stdout, resumed.stdout
    assert _rows(lib, "select status from jobs order by id") == [("interrupted",), ("done",)]
    assert _status(lib)["counts"] == {"indexed": 2}


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_true_states(tmp_path, clip, bikes_mp4):
    lib = tmp_path / "lib"
    proc = _start_and_wait(lib, [clip, bikes_mp4], stage_marks=2)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    stopped_in = time.time() - t0
    assert proc.returncode == EXIT_ABORTED, err[-2000:]
    assert stopped_in < 20, stopped_in  # running stages stop at their next progress report
    _no_trace(out + err)
    assert "Stopped: interrupted (Ctrl-C)." in err and "the next `sightline index` resumes them" in err, err[-2000:]
    last_bar = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("indexing:")][-1]
    assert "100%" not in last_bar, last_bar
    assert _rows(lib, "select status from jobs") == [("interrupted",)]
    states = dict(_rows(lib, "select path, status from videos"))
    assert "indexing" not in states.values(), states
    assert states[str(clip)] == "interrupted" and states[str(bikes_mp4.resolve())] == "pending", states
    # (the next run resumes both, as after a kill: test_a_killed_run_shows_interrupted_and_the_next_run_resumes_it)


# --- resources: a real small filesystem -------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 20 MB tmpfs (needs root and mount; skipped where the machine does not allow it)."""
    where = tmp_path / "small"
    where.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(where)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(fs: Path, leave_kb: int) -> Path:
    avail = shutil.disk_usage(fs).free // 1024
    ballast = fs / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, avail - leave_kb) * 1024)
    return ballast


@pytest.mark.slow
def test_a_full_disk_fails_one_file_leaves_the_rest_and_the_next_run_picks_up(small_fs, tmp_path, clip, bikes_mp4):
    folder = tmp_path / "videos"
    folder.mkdir()
    for f in (clip, bikes_mp4):
        shutil.copy(f, folder / f.name)
    lib = small_fs / "lib"
    assert _sightline(lib, "status").returncode == 0  # the library exists (made by a process that ends)
    ballast = _fill(small_fs, leave_kb=300)

    full = _sightline(lib, "index", str(folder))
    assert full.returncode == EXIT_ABORTED, (full.stdout, full.stderr[-2000:])
    _no_trace(full.stdout + full.stderr)
    assert f"The disk holding the library ({lib}) is full. Free space on it" in full.stdout, full.stdout
    assert "the next `sightline index` resumes them" in full.stdout, full.stdout
    states = sorted(s for (s,) in _rows(lib, "select status from videos"))
    assert states == ["failed", "pending"], states
    assert _rows(lib, "select status from jobs") == [("aborted",)]
    assert "is full" in _rows(lib, "select error from videos where status = 'failed'")[0][0]

    ballast.unlink()
    again = _sightline(lib, "index", str(folder / clip.name))  # one path given: the other resumes as well
    assert again.returncode == 0, (again.stdout, again.stderr[-2000:])
    assert _status(lib)["counts"] == {"indexed": 2}


@pytest.mark.slow
def test_a_full_disk_injected_at_the_write_fails_one_file_and_the_rest_resume(tmp_path, clip, bikes_mp4):
    """The same failure where no tmpfs can be mounted (CI without root): SQLite's SQLITE_FULL error, raised at
    the commit of a stage, as SQLAlchemy wraps it."""
    import threading

    from sqlalchemy.exc import OperationalError

    from indexer.runner import index_paths
    from storage import Library
    from tests.test_indexer_runner import _context

    with Library.open(tmp_path / "lib") as library:
        real_write = library.write

        def full_disk(fn):
            if threading.current_thread().name.startswith("sightline-stage"):  # a stage's commit
                raise OperationalError("INSERT INTO moments ...", {}, sqlite3.OperationalError("database or disk is full"))
            return real_write(fn)

        library.write = full_disk
        summary = index_paths(library, [bikes_mp4, clip], _context(library))
        assert summary.aborted.startswith(f"The disk holding the library ({library.folder}) is full."), summary
        assert [p for p, _ in summary.failed] == [str(bikes_mp4.resolve())] and summary.left == [str(clip)], summary
        assert "sqlalche" not in summary.describe() and "Internal error" not in summary.describe()
        library.write = real_write
        again = index_paths(library, [clip], _context(library))  # bikes, failed for the disk, is taken up too
        assert sorted(again.done) == sorted([str(bikes_mp4.resolve()), str(clip)]) and not again.failed, again


def test_a_read_only_library_is_refused_with_the_fix(small_fs, bikes_mp4):
    lib = small_fs / "lib"
    assert _sightline(lib, "status").returncode == 0  # a process that ends: nothing stays open for writing
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        out = _sightline(lib, "index", str(bikes_mp4))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    assert out.returncode == EXIT_ABORTED, out.stderr
    _no_trace(out.stdout + out.stderr)
    assert f"The library folder {lib} is on a read-only disk" in out.stderr and "remount" in out.stderr, out.stderr


# --- permissions and exit codes ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_unreadable_video_fails_alone_with_the_fix_and_exit_3(tmp_path, bikes_mp4, card_mp4):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(bikes_mp4, folder / "bikes.mp4")
    locked = folder / "locked.mp4"
    shutil.copy(card_mp4, locked)
    locked.chmod(0)
    lib = tmp_path / "lib"
    # root reads anything: drop the two capabilities that bypass file permissions for this run
    prefix = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        caps = "-dac_override,-dac_read_search"
        prefix = ("setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}")
    out = _sightline(lib, "index", str(folder), prefix=prefix)
    assert out.returncode == EXIT_SOME_FAILED, (out.stdout, out.stderr[-2000:])
    assert "locked.mp4: cannot read the file (permission denied). Give this user read access" in out.stdout
    assert "Indexed 1 file(s)" in out.stdout, out.stdout

    unchanged = _sightline(lib, "index", str(folder), prefix=prefix)  # nothing new, the old failure still there
    assert unchanged.returncode == EXIT_SOME_FAILED, unchanged.stdout
    locked.chmod(0o644)
    fixed = _sightline(lib, "index", str(folder))
    assert fixed.returncode == 0 and "1 unchanged" in fixed.stdout, fixed.stdout
    assert _status(lib)["counts"] == {"indexed": 2}


def test_index_exits_4_while_another_run_holds_the_lock(tmp_path, bikes_mp4):
    lib = tmp_path / "lib"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from storage.library import Library\n"
         "with Library.open(sys.argv[1]).indexing_lock():\n    print('held', flush=True); time.sleep(120)",
         str(lib)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = _sightline(lib, "index", str(bikes_mp4))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert out.returncode == EXIT_ABORTED, out.stderr
    assert f"Another indexing run is working on this library (process {holder.pid}" in out.stderr, out.stderr


def test_index_help_documents_the_exit_codes():
    from click.testing import CliRunner

    from app.cli import cli

    text = " ".join(CliRunner().invoke(cli, ["index", "--help"]).output.split())
    assert "Exit codes: 0 all indexed or unchanged; 3 some files failed" in text, text
    assert "4 aborted (disk full, read-only library, interrupted, or another run holds" in text, text
    readme = (ROOT / "README.md").read_text()
    assert "Exit codes" in readme and "| 3 |" in readme and "| 4 |" in readme
