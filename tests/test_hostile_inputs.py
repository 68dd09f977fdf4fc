"""Hostile and careless inputs at every edge (issue 10, item 5): each CLI command and each UI endpoint answers
with a message that says what is wrong, never "Internal error", SQL or a traceback; and queries with nothing a
retriever can use (punctuation, emoji, zero-width characters, a script the text embedder never learned) return
"nothing to search for" or no moments, not arbitrary ones.

The library is written through storage (tests/library_builder.py) with the real MiniLM vectors, so search
behaves as it does after indexing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from storage import validate
from storage.errors import SightlineError
from tests.library_builder import add_video

pytestmark = pytest.mark.slow  # the real MiniLM loads once (a few seconds), the app's Blocks are built once

STREET = [
    (0.0, 3.5, "speech", "Good morning, today we are walking through the old harbour district."),
    (3.5, 7.0, "speech", "The fishermen bring their boats in before the storm arrives."),
    (8.0, 9.0, "speech", "You understand?"),
    (9.0, 9.5, "speech", "No!"),
    (16.0, 19.0, "text", "THANKS FOR WATCHING"),
]

LEAKS = ("Internal error", "Traceback", "SELECT", "sqlalche.me", "sqlite3.", "ValueError", "TypeError",
         "UnicodeEncodeError", "OperationalError")

# Text a careless user or an attacker sends where a query, a question or a video is expected.
NO_CONTENT = ["!!!", "?!...", "😀🎉🔥", "\u200b\u200b", "\ufeff", "— –"]
BAD_TEXT = ["\udcff\udcfe", "harbour \ud800", "harbour\x00", "x" * 3000]
UNKNOWN_SCRIPT = ["สวัสดีครับ ผู้ชายเดินไปตลาด", "ቡና እወዳለሁ", "Привет мир", "ქართული ენა", "日本語のテキスト"]
BAD_VIDEOS = ["²", "٣", "1" * 40, "a" * 60_000, "bad\x00name.mp4", "\udcff.mp4", "%", "../../etc/passwd"]


def assert_clear(text: str) -> None:
    assert text.strip(), "no message at all"
    for leak in LEAKS:
        assert leak not in text, text[:500]
    assert len(text) < 2000, f"a message of {len(text)} characters: {text[:300]}"


@pytest.fixture(scope="module")
def library_dir(tmp_path_factory, embedder):
    from storage import Library

    folder = tmp_path_factory.mktemp("hostile") / "lib"
    with Library.open(folder) as lib:
        add_video(lib, "/videos/street walk.mp4", 20.0, STREET, embed=embedder, model=embedder.model_name)
    return folder


@pytest.fixture(scope="module")
def lib(library_dir):
    from storage import Library

    with Library.open(library_dir) as lib:
        yield lib


# --- the shared checks ---------------------------------------------------------------------------------------


def test_ids_are_ascii_digits_only():
    assert validate.id_number("12") == 12 and validate.id_number(" 7 ") == 7 and validate.id_number(3) == 3
    for bad in ("²", "٣", "1" * 40, "-1", "1.0", "", None, True, [1], 10**30):
        assert validate.id_number(bad) is None, bad
        with pytest.raises(SightlineError):
            validate.video_id(bad)


def test_text_checks_name_the_problem():
    for value, words in [("\udcff", "not UTF-8"), ("a\ud800", "not valid text"), ("a\x00b", "NUL"),
                         (b"\xff\xfe", "not valid UTF-8"), (17, "must be text"), ("x" * 50, "limit is 40")]:
        with pytest.raises(SightlineError, match=words):
            validate.text(value, "query", max_chars=40)
    assert validate.text(b"caf\xc3\xa9", "query") == "café"
    with pytest.raises(SightlineError, match="longer than 255 bytes"):
        validate.path_text("/videos/" + "é" * 128)
    with pytest.raises(SightlineError, match="limit is 4096"):
        validate.path_text("/a" * 2100)


def test_searchable_means_a_letter_or_digit_of_any_script():
    for text in ("harbour", "42", "สวัสดี", "ቡና", "日本", "x!"):
        assert validate.searchable(text), text
    for text in NO_CONTENT + ["", " \t"]:
        assert not validate.searchable(text), text


def test_the_embedder_knows_english_and_not_scripts_it_never_learned(embedder):
    """Measured with MiniLM: unknown scripts are [UNK] or one character per piece; English, French, German,
    Spanish and even nonsense words are spelled with real pieces."""
    tok = validate.tokenizer_of(embedder)
    for query in ("thanks for watching", "quantum chromodynamics lattice", "Où est le marché", "wo ist der Hafen",
                  "xyzzy", "1990s FBI agent", "a"):
        assert validate.known_share(query, tok) >= 0.5, query
    for query in UNKNOWN_SCRIPT + ["नमस्ते दुनिया", "مرحبا بالعالم", "안녕하세요", "Ελληνικά"]:
        assert validate.known_share(query, tok) < 0.5, query
    assert validate.tokenizer_of(lambda texts: None) is None


# --- search: nothing to search for, or no moments, instead of arbitrary ones ------------------------------------


def test_queries_without_letters_or_digits_are_nothing_to_search_for(lib, embedder):
    from storage.search import search

    for query in NO_CONTENT:
        with pytest.raises(SightlineError, match="Nothing to search for") as err:
            search(lib, query, embedder, k=5)
        assert err.value.hint, query


def test_a_script_the_embedder_does_not_know_finds_no_moments(lib, embedder):
    """Before: five arbitrary moments at 0.5 ("You understand?", "No!"); their cosines to a Thai or Amharic
    query (all [UNK]) were 0.26-0.30, as high as a real paraphrase's, so the text vectors are skipped."""
    from storage.search import search

    for query in UNKNOWN_SCRIPT:
        assert search(lib, query, embedder, k=5) == [], query
    hits = search(lib, "bad weather is coming", embedder, k=3)  # a paraphrase still finds its moment
    assert "storm" in hits[0].text, [h.text for h in hits]
    assert search(lib, "har\u200bbour", embedder, k=1)[0].text.startswith("Good morning")  # zero-width dropped


def test_an_unknown_script_still_finds_moments_written_in_it(tmp_path, embedder):
    from storage import Library
    from storage.search import search

    with Library.open(tmp_path / "lib") as lib:
        add_video(lib, "/videos/bangkok.mp4", 10.0, [(1.0, 2.0, "text", "สวัสดีครับ"), (3.0, 4.0, "speech", "No!")],
                  embed=embedder, model=embedder.model_name)
        hits = search(lib, "สวัสดีครับ", embedder, k=5)
        assert [h.text for h in hits] == ["สวัสดีครับ"] and "text" not in hits[0].sources  # keyword only


def test_bad_search_arguments_are_clear(lib, embedder):
    from storage.search import search

    for kwargs in ({"k": 0}, {"k": 10**9}, {"k": "5"}, {"modalities": "smell"}, {"modalities": [["speech"]]},
                   {"video_ids": ["²"]}, {"video_ids": [True]}):
        with pytest.raises(SightlineError) as err:
            search(lib, "harbour", embedder, **kwargs)
        assert_clear(err.value.user_text())
    assert search(lib, "harbour", embedder, k=2, modalities="speech", video_ids=["1"])


def test_video_by_ref_refuses_bad_refs_before_any_sql(lib):
    assert lib.video_by_ref("street walk.mp4").id == lib.video_by_ref("1").id == lib.video_by_ref(1).id
    for bad in BAD_VIDEOS + ["", None, 3.5, ["1"]]:
        with pytest.raises(SightlineError) as err:
            lib.video_by_ref(bad)
        assert_clear(err.value.user_text())


# --- the CLI ------------------------------------------------------------------------------------------------------


def _cli(library_dir, args, env=None):
    from app.cli import cli

    env = {"SIGHTLINE_LIBRARY": str(library_dir), **(env or {})}
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    return result


def test_every_cli_command_answers_hostile_input_with_a_message(library_dir, tmp_path):
    cases = [["search", q] for q in NO_CONTENT + BAD_TEXT]
    cases += [["search", "--video", v, "harbour"] for v in BAD_VIDEOS]
    cases += [["search", "--k", "0", "harbour"], ["search", "--k", "1000000000", "harbour"],
              ["search", "--k", "abc", "harbour"], ["search", "--modality", "smell", "harbour"]]
    cases += [["ask", q] for q in NO_CONTENT + BAD_TEXT] + [["ask", "--video", v, "harbour?"] for v in BAD_VIDEOS]
    cases += [["index", p] for p in ("/tmp/a\x00b.mp4", "/tmp/\udcff.mp4", "/" + "a" * 5000,
                                     "/tmp/" + "a" * 300 + ".mp4", str(tmp_path / "missing.mp4"))]
    cases += [["--library", "/tmp/\udcfflib", "status"], ["--library", "/tmp/a\x00b", "status"]]
    cases += [["serve", "--port", "abc"], ["serve", "--port", "70000"], ["serve", "--host", "no such host!"]]
    for args in cases:
        result = _cli(library_dir, args)
        assert result.exit_code != 0, (args, result.output)
        assert_clear(result.output)
    out = _cli(library_dir, ["search", "สวัสดีครับ"])
    assert out.exit_code == 0 and out.output.strip() == "No moments found.", out.output
    out = _cli(library_dir, ["search", "--video", "street walk.mp4", "storm"])
    assert out.exit_code == 0 and "fishermen" in out.output, out.output


def test_bad_environment_values_are_one_line_for_every_command(library_dir):
    for env, words in [({"SIGHTLINE_PORT": "abc"}, "SIGHTLINE_PORT='abc' is not a whole number"),
                       ({"SIGHTLINE_SAMPLE_FPS": "nan"}, "SIGHTLINE_SAMPLE_FPS='nan' is not a number"),
                       ({"SIGHTLINE_CAPTIONS": "maybe"}, "SIGHTLINE_CAPTIONS='maybe'"),
                       ({"SIGHTLINE_PORT": "0"}, "port must be from 1 to 65535")]:
        for command in (["serve"], ["status"], ["search", "harbour"]):
            if "PORT" in next(iter(env)) and env["SIGHTLINE_PORT"] == "0" and command != ["serve"]:
                continue  # port 0 is a valid number: only serve checks the range
            result = _cli(library_dir, command, env)
            assert result.exit_code != 0 and words in result.output, (env, command, result.output)
            assert_clear(result.output)


def test_serve_refuses_a_port_in_use_before_gradio_starts(library_dir):
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = _cli(library_dir, ["serve", "--port", str(port)])
    assert result.exit_code != 0 and "Address already in use" in result.output and "--port" in result.output
    assert_clear(result.output)


def test_a_real_process_prints_no_traceback(library_dir):
    """Outside CliRunner: undecodable argv bytes and a bad SIGHTLINE_PORT, as a shell passes them."""
    env = {**os.environ, "SIGHTLINE_LIBRARY": str(library_dir)}
    runs = [([b"search", b"\xff\xfe"], {}), ([b"serve"], {"SIGHTLINE_PORT": "abc"})]
    for args, extra in runs:
        done = subprocess.run([sys.executable, "-m", "app", *args], env={**env, **extra}, capture_output=True,
                              timeout=120)
        text = (done.stdout + done.stderr).decode("utf-8", "replace")
        assert done.returncode != 0 and "Error:" in text, (args, text)
        assert_clear(text)


def test_the_cli_and_the_ui_show_the_same_one_line(monkeypatch, tmp_path):
    """One converter (app/errors.py) for both edges: the same error reads the same in a terminal and in the UI,
    a streaming handler's included; a bug is logged and named with the log; the edges' own errors pass as they are."""
    import click
    import gradio as gr

    from app import cli, handlers
    from app.errors import user_message

    log = tmp_path / "sightline.log"
    monkeypatch.setattr("app.logs.log_path", lambda: log)

    def fails(err):
        raise err

    def streams(err):
        yield "first"
        raise err

    for err in (SightlineError("No video 'x' in this library.", hint="Give an id from `sightline status`."),
                RuntimeError("boom")):
        line = user_message(err)
        with pytest.raises(click.ClickException) as in_cli:
            cli.shown_in_cli(fails)(err)
        with pytest.raises(gr.Error) as in_ui:
            handlers.shown_in_ui(fails)(err)
        with pytest.raises(gr.Error) as streamed:
            list(handlers.shown_in_ui(streams)(err))
        assert in_cli.value.message == in_ui.value.message == streamed.value.message == line
        assert in_cli.value.__cause__ is None and in_cli.value.__suppress_context__  # no traceback shown
    line = user_message(SightlineError("No video 'x' in this library.", hint="Give an id."))
    assert line == "No video 'x' in this library. Give an id."
    assert_clear(line)
    assert user_message(RuntimeError("boom")) == f"Internal error: boom. Details in {log}."
    assert "RuntimeError: boom" in log.read_text()  # the traceback went to the log
    kept = gr.Error("already a message")
    with pytest.raises(gr.Error) as same:
        handlers.shown_in_ui(fails)(kept)
    assert same.value is kept
    with pytest.raises(click.Abort):
        cli.shown_in_cli(fails)(click.Abort())


# --- the UI's API endpoints ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def handlers(library_dir):
    """The UI's handlers (app/handlers.py) over the library, bound to the objects app/ui.py binds them to:
    {endpoint name: handler}; no indexing starts (the worker's submit only records)."""
    from functools import partial

    from app import handlers as on
    from app.guard import media_roots
    from app.index_worker import IndexWorker
    from app.served_files import ServedFiles
    from app.services import Services
    from app.settings import load_settings
    from app.space import answerer

    services = Services(load_settings({}, library=str(library_dir), vlm_model="none"))
    library = services.library
    served = ServedFiles(library)
    worker = IndexWorker(services, on_done=served.sync)
    submitted = []
    worker.submit = lambda paths: submitted.append(list(paths))
    roots = media_roots(services.settings.media_roots, services.settings.host)
    fns = {"search": partial(on.run_search, services), "ask": partial(on.ask, library, answerer(services)),
           "reindex": partial(on.reindex, library, worker), "remove": partial(on.remove, library, served),
           "load_moment": partial(on.load_moment, library, served),
           "add_path": partial(on.add_path, library, worker, roots, True)}
    fns["submitted"] = submitted
    yield fns
    library.close()


def _call(fn, *args):
    """A handler's result, or its gr.Error's message (a generator handler is run to its end)."""
    import inspect

    import gradio as gr

    try:
        result = fn(*args)
        if inspect.isgenerator(result):
            result = list(result)
        return result, None
    except gr.Error as err:
        return None, err.message
    except Exception as err:  # noqa: BLE001 - any other exception is the failure this test looks for
        pytest.fail(f"{fn.func.__name__}{args!r:.200} raised {type(err).__name__}: {err}")


def test_every_endpoint_answers_hostile_input_with_a_message(handlers):
    cases = [("search", (q, [], "", None)) for q in NO_CONTENT + BAD_TEXT + [None, 17, ["harbour"]]]
    cases += [("search", ("harbour", [], v, None)) for v in BAD_VIDEOS + [3.5, ["1"]]]
    cases += [("search", ("harbour", m, "", None)) for m in (["smell"], "smell", [["speech"]], 5)]
    cases += [("ask", (q, "", [])) for q in NO_CONTENT + BAD_TEXT + [None, 17]]
    cases += [("ask", ("where is the harbour?", v, [])) for v in BAD_VIDEOS]
    cases += [(name, (v,)) for name in ("reindex", "remove") for v in BAD_VIDEOS + [None, 3.5, "", True]]
    cases += [("load_moment", (r,)) for r in ('{"video": "²", "start": 1}', '{"video": "1", "start": "nan"}',
                                             '{"video": "1", "start": 1e999}', '{"video": [1]}', '[1]', "\udcff",
                                             '{"video": "' + "a" * 60_000 + '"}', "{")]
    cases += [("add_path", (p,)) for p in ("/tmp/a\x00b", "/tmp/\udcff", "/" + "a" * 5000, "/tmp/" + "a" * 300,
                                          17, ["/tmp"])]
    for name, args in cases:
        result, message = _call(handlers[name], *args)
        assert message is not None, (name, args[:2], result)
        assert_clear(message)
    assert handlers["submitted"] == []


def test_the_search_scope_may_be_a_file_name_or_an_id(handlers):
    """Before: `int(scope)` raised "Internal error" for a scope typed as a file name."""
    for scope in ("street walk.mp4", "1", "/videos/street walk.mp4"):
        (film, timeline, summary), message = _call(handlers["search"], "storm", [], scope, None)
        assert message is None and "fishermen" in film and "moment(s)" in summary, (scope, summary)
        assert "street walk.mp4" in timeline["label"]
    (film, _timeline, summary), _ = _call(handlers["search"], "สวัสดีครับ", [], "", None)
    assert summary == "No moments found." and "No moments match" in film
    (film, _timeline, summary), _ = _call(handlers["search"], "storm", [], "", ["not", "an", "id"])
    assert "fishermen" in film


def test_the_http_api_answers_with_the_message(library_dir):
    """Through Gradio's real API (gradio_client over HTTP): the caller gets the message itself."""
    from gradio_client import Client

    from tests.browser.conftest import call_event, running_app
    from tests.contracts import assert_moment

    calls = [("/search", ("!!!", [], ""), "Nothing to search for"),
             ("/search", ("harbour", [], "²"), "No video '²' in this library"),
             ("/search", ("harbour", [], "a" * 60_000), "no id, path or file name is longer than 4096"),
             ("/search", ("harbour", ["smell"], ""), "Unknown modality 'smell'"),
             ("/search", ("harbour", [], "", 0), "k must be from 1 to"),
             ("/ask", ("harbour?", "²"), "No video '²' in this library"),
             ("/ask", ("!!!",), "Nothing to search for"), ("/ask", (17,), "must be text, not int"),
             ("/search", (17,), "must be text, not int"),
             ("/reindex", ("²",), "'²' is not a video id"),
             ("/add_path", ("/tmp/a\x00b",), "NUL character")]
    # the UI's own events (private: no API lists them, gradio_client refuses them) still answer any client
    events = [("load_moment", ('{"video": "²", "start": 1}',), "'²' is not a video id"),
              ("ui_search", ("!!!", [], "", None), "Nothing to search for")]
    with running_app(library_dir) as (url, _services, _demo):
        client = Client(url, verbose=False)
        for api_name, args, words in calls:
            with pytest.raises(Exception) as err:  # gradio_client's AppError carries the server's message
                client.predict(*args, api_name=api_name)
            assert words in str(err.value), (api_name, str(err.value)[:300])
            assert_clear(str(err.value))
        for api_name, args, words in events:
            kind, payload = call_event(url, api_name, *args)
            assert kind == "error", (api_name, payload[:300])
            message = json.loads(payload)["error"]
            assert words in message, (api_name, message)
            assert_clear(message)
        moments = client.predict("storm", [], "street walk.mp4", api_name="/search")
        assert moments and "fishermen" in moments[0]["text"], moments
        for m in moments:
            assert_moment(m, duration=20.0)
            assert m["video"] == "/videos/street walk.mp4", m
        kind, payload = call_event(url, "ui_search", "storm", [], "street walk.mp4", None)
        assert kind == "complete" and "fishermen" in payload and "moment(s)" in payload, payload[:300]
