"""The explorer page in a real browser: Debian's chromium driven by Playwright, against the
live explorer and service of tests/explore_fixtures.py (real HTTP, real gRPC, no mocks).

Search and see results, open an explanation, filter by a genre chip, record an event and
see the recommendations change, erase the user, read GetInfo, see a service error as a
message, search by keyboard alone; axe-core finds no serious or critical violation.
Screenshots at desktop and phone widths go to ``.mmrec/artefacts/explore/`` (git-ignored;
``MMREC_ARTEFACTS`` puts them elsewhere). `make tools` installs chromium (apt) and axe-core
(npm, into ``.mmrec/node``); without them these tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.explore import ImageRoots, ServiceTarget, make_explorer
from tests.explore_fixtures import LiveExplorer, live, start_service

__all__ = ["live"]  # the module-scoped fixture, used by name

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AXE = Path(os.environ.get("MMREC_AXE_JS", ROOT / ".mmrec/node/node_modules/axe-core/axe.min.js"))
ARTEFACTS = Path(os.environ.get("MMREC_ARTEFACTS", ROOT / ".mmrec/artefacts")) / "explore"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 60_000
"""Generous: the tiny models are fast, but these machines are busy."""

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
sync_api.expect.set_options(timeout=TIMEOUT_MS)
if not Path(CHROMIUM).is_file():
    pytest.skip("chromium is not installed (`make tools` installs Debian's chromium with apt)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, launched by Playwright (never a downloaded browser)."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


def open_page(browser: Any, live: LiveExplorer, viewport: dict[str, int] = DESKTOP,
              bypass_csp: bool = False) -> Any:
    """A fresh page (own context) on the explorer, its GetInfo loaded."""
    context = browser.new_context(viewport=viewport, bypass_csp=bypass_csp)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors
    page.goto(live.url)
    sync_api.expect(page.locator("#service-address")).to_have_text(live.service.target)
    return page


def shoot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as a test artefact."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def search(page: Any, text: str) -> Any:
    """Type a query, press Enter, wait for the result cards."""
    page.fill("#q", text)
    page.press("#q", "Enter")
    page.wait_for_selector("#results li.card, #error:not([hidden])")
    if page.locator("#error").is_visible():
        raise AssertionError(f"the page shows an error: {page.locator('#error').inner_text()}")
    return page.locator("#results li.card")


def test_search_shows_results_and_an_explanation(browser: Any, live: LiveExplorer) -> None:
    page = open_page(browser, live)
    cards = search(page, "star trek")
    assert cards.count() >= 3
    timings = page.locator("#search-timings")
    for stage in ("encode", "retrieve", "explain", "round trip"):
        sync_api.expect(timings).to_contain_text(stage)
    first = cards.first
    first.locator("summary").click()
    why = first.locator("details.why")
    sync_api.expect(why).to_have_attribute("open", "")
    sync_api.expect(why).to_contain_text("rank")
    sync_api.expect(why).to_contain_text("hybrid")
    assert why.locator(".bar span").count() >= 1
    assert page.locator("#results mark").count() >= 1  # matched words highlighted
    shoot(page, "search-desktop")
    page.set_viewport_size(PHONE)
    shoot(page, "search-phone")
    assert not page.errors


def test_llm_score_and_reason_when_asked(browser: Any, live: LiveExplorer) -> None:
    page = open_page(browser, live)
    page.locator(".knobs summary").click()
    sync_api.expect(page.locator("#rerank")).to_be_enabled()
    page.check("#rerank")
    page.check("#reason")
    first = search(page, "star wars").first
    sync_api.expect(page.locator("#search-timings")).to_contain_text("LLM re-ranked")
    first.locator("summary").click()
    why = first.locator("details.why")
    sync_api.expect(why).to_contain_text("LLM score")
    sync_api.expect(why.locator(".reason")).not_to_be_empty()
    shoot(page, "llm-desktop")


def test_thumbnails_show_images_and_placeholders(browser: Any, live: LiveExplorer) -> None:
    page = open_page(browser, live)
    search(page, "a cute cat")
    cat = page.locator('#results li.card[data-id="stamp-cat"] img')
    cat.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=cat.element_handle())
    assert cat.get_attribute("alt") == "a cute cat"


def test_an_uploaded_image_searches(browser: Any, live: LiveExplorer) -> None:
    page = open_page(browser, live)
    sync_api.expect(page.locator("#image")).to_be_enabled()
    page.set_input_files("#image", str(live.images / "animals" / "stamp-dog.png"))
    page.click("#search-form button[type=submit]")
    cards = page.locator("#results li.card")
    cards.first.wait_for()
    assert cards.count() >= 1
    sync_api.expect(page.locator("#status")).to_contain_text("clip")


def test_genre_chip_filters_results(browser: Any, live: LiveExplorer) -> None:
    page = open_page(browser, live)
    search(page, "star")
    chip = page.locator("#chips label", has_text="Horror")
    chip.wait_for()
    chip.click()
    page.click("#search-form button[type=submit]")
    sync_api.expect(page.locator("#results li.card")).to_have_count(1)
    sync_api.expect(page.locator("#results li.card h4")).to_have_text("Alien")
    assert page.locator("#ranges fieldset[data-key=year]").count() == 1


def test_recording_an_event_changes_recommendations(browser: Any, live: LiveExplorer) -> None:
    page = open_page(browser, live)
    page.click("#nav-users")
    page.click("#new-user")
    recs = page.locator("#recs li.card")
    recs.first.wait_for()
    sync_api.expect(page.locator("#rec-timings")).to_contain_text("cold start")
    before = [recs.nth(i).get_attribute("data-id") for i in range(recs.count())]
    page.click("#nav-search")
    search(page, "alien")
    page.locator('#results li.card[data-id="ml-183"] button[data-kind=like]').click()
    sync_api.expect(page.locator("#events li")).to_contain_text(["like Alien"])
    sync_api.expect(page.locator("#rec-timings")).not_to_contain_text("cold start")
    page.click("#nav-users")
    recs.first.wait_for()
    after = [recs.nth(i).get_attribute("data-id") for i in range(recs.count())]
    assert after != before and "ml-183" not in after  # the liked film is seen: left out
    assert page.locator("#recs .badge").count() >= 1  # what moved or is new is marked
    first = recs.first
    first.locator("summary").click()
    sync_api.expect(first.locator(".because")).to_contain_text("Alien")
    shoot(page, "users-desktop")
    page.set_viewport_size(PHONE)
    shoot(page, "users-phone")
    page.set_viewport_size(DESKTOP)

    page.click("#erase-user")
    erased = page.locator("#erased")
    sync_api.expect(erased).to_be_visible()
    sync_api.expect(erased).to_contain_text("1 event,")
    sync_api.expect(erased).to_contain_text("like Alien")
    sync_api.expect(page.locator("#events")).to_contain_text("no events recorded here yet")
    shoot(page, "erased-desktop")
    assert not page.errors


def test_info_page_shows_models_channels_and_counts(browser: Any, live: LiveExplorer) -> None:
    page = open_page(browser, live)
    page.click("#nav-info")
    sync_api.expect(page.locator("#info-summary")).to_contain_text("18")
    sync_api.expect(page.locator("#models tbody")).to_contain_text("clip")
    sync_api.expect(page.locator("#channels tbody")).to_contain_text("fused")
    shoot(page, "info-desktop")
    page.set_viewport_size(PHONE)
    shoot(page, "info-phone")


def test_service_errors_are_messages_not_tracebacks(browser: Any, live: LiveExplorer) -> None:
    page = open_page(browser, live)
    page.fill("#q", "x" * 500)  # above the service's max_text_chars
    page.press("#q", "Enter")
    error = page.locator("#error")
    sync_api.expect(error).to_be_visible()
    sync_api.expect(error).to_contain_text("INVALID_ARGUMENT")
    assert "Traceback" not in error.inner_text()
    shoot(page, "error-desktop")


def test_keyboard_alone_searches_and_explains(browser: Any, live: LiveExplorer) -> None:
    page = open_page(browser, live)
    order = []
    for _ in range(12):  # the skip link, the sections, then the search box
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || "
                                   "document.activeElement.textContent"))
        if order[-1] == "q":
            break
    assert order[0] == "Skip to content" and order[-1] == "q", order
    page.keyboard.type("jurassic")
    page.keyboard.press("Enter")
    page.locator("#results li.card").first.wait_for()
    page.focus("#results li.card summary")
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#results li.card details.why").first).to_have_attribute(
        "open", "")


@pytest.fixture
def without_clip(tmp_path: Path, tiny_text_dir: Path) -> Iterator[LiveExplorer]:
    """A service whose CLIP channel is off (configured without weights), and its explorer."""
    engine, service = start_service(tmp_path, tiny_text_dir, clip=False)
    explorer = make_explorer(ServiceTarget(service.target), images=ImageRoots([]))
    explorer.start()
    yield LiveExplorer(service, explorer, tmp_path / "images")
    explorer.stop()
    service.stop()
    engine.close()


def test_image_upload_is_off_with_the_reason_when_clip_is(browser: Any,
                                                          without_clip: LiveExplorer) -> None:
    page = open_page(browser, without_clip)
    sync_api.expect(page.locator("#image")).to_be_disabled()
    sync_api.expect(page.locator("#image-note")).to_contain_text("Image search is off")
    cards = search(page, "a cute cat")  # text search still runs, on the text channels
    assert cards.count() >= 1
    shoot(page, "clip-off-desktop")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_no_serious_accessibility_violations(browser: Any, live: LiveExplorer,
                                             viewport: dict[str, int]) -> None:
    if not AXE.is_file():
        pytest.skip(f"axe-core not found at {AXE} (`make tools` installs it with npm)")
    page = open_page(browser, live, viewport, bypass_csp=True)  # to inject axe.min.js
    search(page, "star wars")
    page.locator("#results li.card summary").first.click()
    found = {"search": audit(page)}
    page.click("#nav-users")
    page.fill("#user", "seed-visitor")
    page.press("#user", "Enter")
    page.locator("#recs li.card").first.wait_for()
    found["users"] = audit(page)
    page.click("#nav-info")
    page.locator("#models tbody tr").first.wait_for()
    found["info"] = audit(page)
    assert found == {"search": [], "users": [], "info": []}


def audit(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document)")
    return [f"{v['id']} ({v['impact']}): {v['help']} at "
            f"{[n['target'] for n in v['nodes']][:3]}"
            for v in result["violations"] if v["impact"] in ("serious", "critical")]
