"""The web UI's API as a script sees it: `gradio_client` against a running server lists exactly the scripted
endpoints of app/api.py (no `/False`, no `*_1` twins, none of the UI's own events), and /search, /ask and
/status answer with data (DESIGN moments, the `ask --json` object, the status report), the same as the CLI's
`--json` output for the same library.

The library is written through storage (tests/library_builder.py) with the real MiniLM vectors; the server runs
in this process on a free localhost port (tests/browser/conftest.py `running_app`), without a VLM.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from tests.browser.conftest import running_app
from tests.conftest import gradio_media
from tests.contracts import assert_moment
from tests.library_builder import add_video, minilm_library

pytestmark = pytest.mark.slow  # the real MiniLM loads, a Gradio server starts

SCRIPTED = {"/search", "/ask", "/status", "/add_path", "/upload", "/reindex", "/remove", "/load_model"}
PARAMETERS = {"/search": ["query", "modalities", "video", "k"], "/ask": ["question", "video"], "/status": [],
              "/add_path": ["path"], "/upload": ["files"], "/reindex": ["video"], "/remove": ["video"],
              "/load_model": []}
DURATIONS = {"/videos/street walk.mp4": 20.0, "/videos/kitchen.mp4": 14.0}
STREET = [
    (0.0, 3.5, "speech", "Good morning, today we are walking through the old harbour district."),
    (3.5, 7.0, "speech", "The fishermen bring their boats in before the storm arrives."),
    (16.0, 19.0, "text", "THANKS FOR WATCHING"),
]
KITCHEN = [
    (2.0, 6.0, "speech", "First we chop two onions and heat the olive oil in a large pan."),
    (11.0, 13.0, "text", "RECIPE: TOMATO SOUP"),
]


@pytest.fixture(scope="module")
def library_dir(tmp_path_factory):
    videos = {path: (duration, moments) for (path, duration), moments in zip(DURATIONS.items(), (STREET, KITCHEN))}
    return minilm_library(tmp_path_factory.mktemp("ui-api") / "lib", videos)


@pytest.fixture(scope="module")
def server(library_dir):
    """(url, services, client, submitted): the app on a free port; the index worker only records what it gets."""
    from gradio_client import Client

    with running_app(library_dir) as (url, services, _demo):
        submitted: list[list[str]] = []
        services.index_worker.submit = lambda paths: submitted.append(list(paths))
        yield url, services, Client(url, verbose=False), submitted


def _cli_json(library_dir, *args) -> list:
    """What `sightline ... --json` prints for the same library: its objects (status prints one, indented)."""
    from app.cli import cli

    result = CliRunner().invoke(cli, ["--library", str(library_dir), *args, "--json"],
                                env={"SIGHTLINE_VLM_MODEL": "none"})
    assert result.exit_code == 0, result.output
    if args[0] == "status":
        return [json.loads(result.output)]
    return [json.loads(line) for line in result.output.splitlines() if line.strip()]


def _assert_moments(moments: list) -> None:
    assert isinstance(moments, list), moments
    for m in moments:
        assert_moment(m, duration=DURATIONS[m["video"]])


def test_the_readme_documents_every_scripted_endpoint(tmp_path):
    import re
    from pathlib import Path

    from app.services import Services
    from app.settings import load_settings
    from app.ui import build_ui

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Scripting the web UI", 1)[1].split("\n#", 1)[0].split("**Hugging Face Space.**")[0]
    services = Services(load_settings({}, library=str(tmp_path / "lib"), vlm_model="none"))
    try:
        public = {"/" + d["api_name"] for d in build_ui(services).config["dependencies"]
                  if d["api_visibility"] == "public"}
    finally:
        services.library.close()
    assert public == SCRIPTED
    listed = {name for row in re.findall(r"^\| `(/\w+)`(?:, `(/\w+)`)?", section, re.M) for name in row if name}
    assert listed == SCRIPTED, listed
    assert set(re.findall(r'api_name="(/\w+)"', section)) <= SCRIPTED


def test_the_api_lists_the_scripted_endpoints_and_nothing_else(server):
    _url, _services, client, _ = server
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == SCRIPTED, sorted(api["named_endpoints"])
    assert api["unnamed_endpoints"] == {}
    for name, info in api["named_endpoints"].items():
        assert [p["parameter_name"] for p in info["parameters"]] == PARAMETERS[name], (name, info["parameters"])
        assert len(info["returns"]) == 1, (name, info["returns"])  # one value a script can use, not UI updates
    for hidden in ("/False", "/refresh_library_1", "/ui_search", "/ui_ask", "/load_moment", "/ui_library_tick"):
        with pytest.raises(ValueError, match="Cannot find a function"):
            client.predict(api_name=hidden)


def test_search_returns_the_moments_the_cli_prints(server, library_dir):
    _url, _services, client, _ = server
    moments = client.predict("storm", api_name="/search")
    _assert_moments(moments)
    assert "fishermen" in moments[0]["text"] and moments[0]["video"] == "/videos/street walk.mp4", moments[0]
    assert moments == _cli_json(library_dir, "search", "storm")
    scoped = client.predict(query="soup", modalities=["text"], video="kitchen.mp4", k=1, api_name="/search")
    _assert_moments(scoped)
    assert [(m["video"], m["modality"], m["text"]) for m in scoped] == [("/videos/kitchen.mp4", "text",
                                                                         "RECIPE: TOMATO SOUP")]
    with pytest.raises(Exception, match="Nothing to search for"):  # gradio_client's AppError: the UI's message
        client.predict("!!!", api_name="/search")
    with pytest.raises(Exception, match="No video 'nope.mp4'"):
        client.predict("storm", None, "nope.mp4", api_name="/search")


def test_ask_returns_the_answer_and_its_evidence_as_the_cli_does(server, library_dir):
    _url, _services, client, _ = server
    question = "when do the fishermen bring their boats in?"
    result = client.predict(question, api_name="/ask")
    assert set(result) == {"answer", "evidence", "mode"} and result["mode"] == "evidence-only", result
    assert result["evidence"] and "fishermen" in result["evidence"][0]["text"], result
    for e in result["evidence"]:
        assert_moment(e, duration=DURATIONS[e["video"]], evidence=True)
    assert [result] == _cli_json(library_dir, "ask", question)
    scoped = client.predict("what do they cook?", "kitchen.mp4", api_name="/ask")
    assert scoped["evidence"] and {e["video"] for e in scoped["evidence"]} == {"/videos/kitchen.mp4"}, scoped
    with pytest.raises(Exception, match="question is empty"):
        client.predict("   ", api_name="/ask")


def test_status_and_load_model_report_data(server, library_dir):
    _url, _services, client, _ = server
    report = client.predict(api_name="/status")
    cli_report = _cli_json(library_dir, "status")[0]
    for video in cli_report["videos"]:  # the API names a video's file `video`, as moments do (app/api.py)
        video["video"] = video.pop("path")
    assert {k: v for k, v in report.items() if k != "indexing"} == cli_report
    assert report["library"] == str(library_dir) and [v["video"] for v in report["videos"]] == list(DURATIONS)
    assert report["indexing"] == {"running": False, "queued": 0, "progress": "", "last_result": ""}
    model = client.predict(api_name="/load_model")
    assert model["model"] is None and "none" in model["reason"].lower(), model


def test_library_endpoints_queue_and_change_the_library(server, tmp_path):
    from gradio_client import handle_file

    from storage import catalog as lv

    _url, services, client, submitted = server
    folder = tmp_path / "footage"
    folder.mkdir()
    clip = folder / "a.mp4"
    shutil.copyfile(gradio_media("videos", "a.mp4"), clip)
    note = tmp_path / "notes.txt"
    note.write_text("not a video")

    assert "in the background" in client.predict(str(folder), api_name="/add_path")
    with pytest.raises(Exception, match="not an absolute path"):
        client.predict("footage", api_name="/add_path")
    assert "Indexing 1 uploaded file(s)" in client.predict([handle_file(str(clip))], api_name="/upload")
    with pytest.raises(Exception, match="Invalid file type"):  # Gradio's own check of the file input's types
        client.predict([handle_file(str(note))], api_name="/upload")
    uploaded = services.library.folder / "uploads" / "a.mp4"
    assert submitted == [[str(folder)], [str(uploaded)]] and uploaded.is_file()

    spares = [tmp_path / "spare1.mp4", tmp_path / "spare2.mp4"]
    ids = []
    for spare in spares:
        shutil.copyfile(clip, spare)
        ids.append(add_video(services.library, str(spare), 5.0, [(0.0, 2.0, "speech", "spare")], embed=None)[0])
    assert "Re-indexing spare1.mp4" in client.predict(str(ids[0]), api_name="/reindex")
    assert submitted[-1] == [str(spares[0])]  # its rows went; the queued run (recorded here) writes them again
    assert "Removed spare2.mp4" in client.predict(str(ids[1]), api_name="/remove")
    assert [v.path for v in lv.videos(services.library)] == list(DURATIONS) and spares[1].is_file()
    with pytest.raises(Exception, match="is not a video id"):
        client.predict("../../etc/passwd", api_name="/remove")
