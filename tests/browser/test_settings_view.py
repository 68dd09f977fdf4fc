"""Settings view: the answering model (or why there is none), device, cache use and the library location."""

from __future__ import annotations

import pytest

from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_settings_say_why_no_model_is_loaded_and_where_the_library_is(indexed_app, page):
    url, services, _demo = indexed_app
    page.goto(url)
    page.get_by_role("tab", name="Settings").click()
    page.click("#load-model")
    page.get_by_text("vlm_model is 'none'").first.wait_for()
    text = page.inner_text("#status")
    assert str(services.library.folder) in text
    for label in ("Answering model", "Quantization", "Device", "Cache hit rate", "Cache on disk", "Library"):
        assert label in text, f"{label} missing from the status view:\n{text}"
    assert "2 (2 indexed)" in text, text
    screenshot(page, "settings")
