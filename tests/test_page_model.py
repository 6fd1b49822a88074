"""Switching models in the page: the download announced with its size, a failure said once in plain words
with the picker back on the model in use, and every mask naming the model that made it; the picker's labels
give each model's embedding time, measured here or estimated.

The app runs against a loopback Hub that serves sam-vit-large's weights slowly and has no sam-vit-huge.
"""

import re
import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.helpers import hub as hub_module
from tests.helpers.browser import (
    DEBUG,
    REPO,
    browser_fixture,  # noqa: F401  (a fixture)
    choose_model,
    click,
    open_app,
    run_app,
    upload,
)
from tests.helpers.hub import LocalHub, hub_env

pytestmark = pytest.mark.browser
COFFEE = str(REPO / "examples" / "coffee.jpg")
ASTRONAUT = str(REPO / "examples" / "astronaut.jpg")  # not embedded by an earlier test here
SLOW = ("facebook/sam-vit-large", "model.safetensors")


@pytest.fixture(scope="module")
def app_url(checkpoints, tmp_path_factory):
    send_file = hub_module._Handler._send_file

    def slowly(handler, repo_id, filename, local, commit, body):
        """sam-vit-large's weights in eight parts, half a second apart, so the page can follow the download."""
        if not (body and (repo_id, filename) == SLOW):
            return send_file(handler, repo_id, filename, local, commit, body)
        send_file(handler, repo_id, filename, local, commit, False)  # the headers
        data = local.read_bytes()
        for i in range(0, len(data), len(data) // 8 + 1):
            handler.wfile.write(data[i : i + len(data) // 8 + 1])
            handler.wfile.flush()
            time.sleep(0.5)

    hub = LocalHub()
    for repo_id, files in checkpoints.published().items():
        if repo_id != "facebook/sam-vit-huge":
            hub.add(repo_id, files)
    tmp = tmp_path_factory.mktemp("app")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_module._Handler, "_send_file", slowly)
        hub_url = hub.start()
        try:
            with run_app(["--model", "sam-vit-base"], hub_env(hub_url, tmp / "hf"), tmp / "app.log") as url:
                yield url
        finally:
            hub.stop()


def status_has(page, text: str, timeout_ms: int = 60_000) -> None:
    page.wait_for_function("(t) => document.querySelector('#sam-status').innerText.includes(t)", arg=text,
                           timeout=timeout_ms, polling=50)


def test_a_model_switch_shows_the_download_and_a_failure_once(browser, app_url):
    page = open_app(browser, app_url, viewport=(1280, 900))
    status_has(page, "sam-vit-base (facebook/sam-vit-base)")
    upload(page, COFFEE)
    click(page, 300, 200)
    assert "from sam-vit-base" in page.inner_text(".sam-mask-note")

    page.evaluate("""() => {  // what the status line says, each time it changes
        window.said = [];
        const status = document.querySelector('#sam-status');
        new MutationObserver(() => window.said.push(status.innerText))
            .observe(status, { subtree: true, childList: true, characterData: true });
    }""")
    choose_model(page, "sam-vit-large")
    status_has(page, "sam-vit-large (facebook/sam-vit-large)")
    said = page.evaluate("window.said")
    # Its size, then how far it is, while it downloads.
    shares = [int(m[1]) for t in said if (m := re.search(r"Downloading sam-vit-large \([0-9.]+ [KM]B\)… - (\d+)", t))]
    assert shares and 0 < max(shares) < 100, said
    page.wait_for_function("document.querySelector('.sam-mask-note').innerText.includes('from sam-vit-large')")

    choose_model(page, "sam-vit-huge")  # not on this Hub
    status_has(page, "Could not load sam-vit-huge")
    page.wait_for_function("document.querySelector('#sam-model input').value.startsWith('sam-vit-large · ')")
    text = page.inner_text("body")
    assert text.count("facebook/sam-vit-huge not found") == 1 and "WeightsError" not in text
    assert "Still using sam-vit-large" in page.inner_text("#sam-status")
    assert page.inner_text(".sam-message") == ""
    click(page, 100, 300)  # masks still come from the model in use, and say so
    assert "from sam-vit-large" in page.inner_text(".sam-mask-note")
    assert page.errors == []
    page.context.close()


def test_the_picker_labels_the_model_in_use_with_its_measured_time_after_an_upload(browser, app_url):
    page = open_app(browser, app_url, viewport=(1280, 900))
    status_has(page, "sam-vit-base (facebook/sam-vit-base)")
    upload(page, ASTRONAUT)
    page.wait_for_function(
        "/^sam-vit-base · [0-9.]+ s measured here$/.test(document.querySelector('#sam-model input').value)",
        timeout=30_000, polling=50,
    )
    page.locator("#sam-model input").click()
    labels = page.eval_on_selector_all("#sam-model li[role=option]", "(els) => els.map((e) => e.ariaLabel)")
    assert re.fullmatch(r"sam-vit-base · [0-9.]+ s measured here", labels[0]), labels
    # a model that has not embedded anything here is estimated from the measured one's rate
    assert any(re.fullmatch(r"sam2\.1-hiera-tiny · ~[0-9.]+ s, estimated", label) for label in labels), labels
    assert "slimsam-50" in labels  # its FLOPs are not known before it loads: the name alone
    page.keyboard.press("Escape")
    page.wait_for_selector("#sam-model li[role=option]", state="detached")  # the list no longer covers the image
    click(page, 300, 200)  # the picker's value is still the model's name
    try:
        page.wait_for_function("document.querySelector('.sam-mask-note').innerText.includes('from sam-vit-base')",
                               timeout=10_000, polling=50)  # the note follows the drawing
    except PlaywrightTimeout:  # say what the page showed instead
        shown = page.evaluate(f"[document.querySelector('.sam-mask-note').innerText, {DEBUG}.state().model, "
                              f"{DEBUG}.timings().slice(-1), document.querySelector('#sam-status').innerText]")
        raise AssertionError(f"mask note, model, the click's timing, status: {shown}") from None
    # the click took the focus from the picker, whose blur Gradio sends as an `input` with the same model: that
    # must not switch to it again (a switch says "embedding cached", this image's first embedding having been
    # measured, and redraws the page under the click)
    page.wait_for_timeout(1_500)
    status = page.inner_text("#sam-status")
    assert "embedding cached" not in status and re.search(r"embedding [0-9.]+ s", status), status
    assert page.errors == []
    page.context.close()
