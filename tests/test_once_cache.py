"""storage.once.OnceCache, the one "load once under a lock" of Sightline, and the loaders that go through it:
concurrent callers share one build, a failed build is retried (or remembered, for the models handed to the
indexer), a private build still waits its turn."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from storage.once import OnceCache

THREADS = 8


class Builder:
    """A slow build that counts its calls and the most calls running at once; fails the first `fail` times."""

    def __init__(self, fail: int = 0, seconds: float = 0.2):
        self.calls, self.running, self.most_at_once = 0, 0, 0
        self.fail, self.seconds = fail, seconds
        self._count = threading.Lock()

    def __call__(self) -> object:
        with self._count:
            self.calls += 1
            call = self.calls
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.seconds)  # long enough for every other thread to arrive while this build runs
        with self._count:
            self.running -= 1
        if call <= self.fail:
            raise RuntimeError(f"build {call} failed")
        return object()


def all_at_once(fn, n: int = THREADS) -> list:
    """fn() from n threads released together; each result, or the exception it raised."""
    start = threading.Barrier(n)

    def one():
        start.wait()
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - the test looks at what each caller got
            return err

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: one(), range(n)))


def test_concurrent_callers_share_one_build():
    cache, build = OnceCache(), Builder()
    results = all_at_once(lambda: cache.get("model", build))
    assert build.calls == 1, f"{build.calls} builds for {THREADS} concurrent callers"
    assert all(r is results[0] for r in results) and not isinstance(results[0], Exception)
    assert cache.get("model", Builder()) is results[0]  # later callers too
    assert cache.peek("model") is results[0]


def test_each_key_is_built_once_and_keys_are_built_one_at_a_time():
    cache, build = OnceCache(), Builder(seconds=0.05)
    results = all_at_once(lambda: cache.get(threading.get_ident() % 2, build))
    assert build.most_at_once == 1  # two models are never loaded side by side
    assert build.calls == len({id(r) for r in results}) <= 2


def test_a_failed_build_is_not_kept_and_the_next_caller_builds_again():
    cache, build = OnceCache(), Builder(fail=1, seconds=0)
    with pytest.raises(RuntimeError, match="build 1 failed"):
        cache.get("model", build)
    assert cache.peek("model") is None
    value = cache.get("model", build)
    assert build.calls == 2 and cache.get("model", build) is value and build.calls == 2


def test_a_failed_build_waited_on_is_retried_by_the_waiter():
    cache, build = OnceCache(), Builder(fail=1)
    results = all_at_once(lambda: cache.get("model", build))
    errors = [r for r in results if isinstance(r, Exception)]
    assert [str(e) for e in errors] == ["build 1 failed"]  # only the caller whose build failed sees the error
    assert build.calls == 2 and len({id(r) for r in results if r not in errors}) == 1


def test_remembered_failure_reaches_every_caller_without_another_build():
    cache, build = OnceCache(remember_failures=True), Builder(fail=1)
    results = all_at_once(lambda: cache.get("model", build))
    assert build.calls == 1
    assert all(isinstance(r, RuntimeError) and r is results[0] for r in results), results
    with pytest.raises(RuntimeError, match="build 1 failed"):
        cache.get("model", build)
    assert build.calls == 1
    cache.clear()  # forgetting it allows a new try
    assert not isinstance(cache.get("model", build), Exception) and build.calls == 2


def test_keep_false_builds_a_private_value_but_still_one_build_at_a_time():
    cache = OnceCache()
    shared = cache.get("model", object)
    build = Builder(seconds=0.05)
    private = all_at_once(lambda: cache.get("model", build, keep=False), n=4)
    assert build.calls == 4 and build.most_at_once == 1
    assert len({id(p) for p in private}) == 4 and shared not in private
    assert cache.get("model", Builder()) is shared


def test_clear_forgets_values():
    cache = OnceCache()
    first = cache.get("model", object)
    cache.clear()
    assert cache.peek("model") is None
    assert cache.get("model", object) is not first


# --- the loaders that use it --------------------------------------------------------------------------------


def test_ocr_engine_loads_once_for_concurrent_callers_and_a_failed_start_is_retried(monkeypatch):
    from indexer.models import ocr

    monkeypatch.setattr(ocr, "_engines", OnceCache())
    build = Builder(fail=1)
    monkeypatch.setattr(ocr, "_load_engine", lambda *args: build())
    results = all_at_once(lambda: ocr.load_ocr(max_side=123))
    readers = [r for r in results if not isinstance(r, Exception)]
    assert build.calls == 2 and len(readers) == THREADS - 1
    assert len({id(r.engine) for r in readers}) == 1 and all(r.max_side == 123 for r in readers)


def test_the_indexers_lazy_model_remembers_its_failure_and_is_none_when_not_configured():
    from indexer.context import Lazy

    assert Lazy(None, "visual embedder").get() is None
    build = Builder(fail=1)
    lazy = Lazy(build, "speech model")
    results = all_at_once(lazy.get)
    assert build.calls == 1 and all(isinstance(r, RuntimeError) and r is results[0] for r in results)
    ok = Lazy(Builder(), "OCR")
    assert ok.get() is ok.get()


def test_services_load_the_answering_model_once_and_show_it_only_once_loaded(tmp_path, monkeypatch):
    from app.services import Services
    from app.settings import load_settings
    from engine import loading

    build = Builder()
    monkeypatch.setattr(loading, "load_vlm_or_reason", lambda *args, **kwargs: (build(), ""))
    services = Services(load_settings({}, library=str(tmp_path / "lib"), vlm_model="none"))
    assert services.loaded_vlm() is None
    results = all_at_once(services.vlm)
    assert build.calls == 1 and all(r is results[0] for r in results)
    assert services.loaded_vlm() is results[0]
