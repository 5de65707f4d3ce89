"""The studio in a real browser (Debian's Chromium driven by Playwright) against the real app,
a real local Ray, MLflow and Triton: drop pictures -> a refusal shown beside the bad one ->
train a LoRA on the toy base, following its progress -> promote through the gate (and a refusal
shown with its reason) -> deploy -> generate -> the image appears and re-renders identically.

Screenshots land in the test's folder, or in $DREAMLOOM_STUDIO_SCREENSHOTS when set (the README's
come from there)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from PIL import Image

from dreamloom.serving.repository import ServingStore
from dreamloom.serving.server import TritonServer, free_port
from dreamloom.toy.concepts import INSTANCE_PROMPT, write_concept

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
# As the machine notes say: without these, Chromium keeps trying to reach Google's hosts.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TRAINING_S = 300


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory):
    from dreamloom.settings import work_dir
    from dreamloom.studio.app import Studio, StudioSettings, launch

    store = ServingStore(tmp_path_factory.mktemp("studio-serving") / "store")
    store.ensure_model("dreamloom", "toy", max_batch_size=4, adapter_budget_mib=64)
    server = TritonServer.for_store(store, ["dreamloom"], free_port(), free_port(), free_port())
    server.start(timeout_s=300)
    settings = StudioSettings(work=work_dir() / "studio", triton_url=server.http_url, serving_store=store.root)
    port = free_port()
    page = launch(Studio(settings), port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        page.close()
        server.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("DREAMLOOM_STUDIO_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fill(page, elem_id: str, value) -> None:
    page.locator(f"#{elem_id}").locator("textarea, input").first.fill(str(value))


def test_teach_promote_deploy_and_generate_in_a_browser(studio_url, browser, screenshots, tmp_path):
    from playwright.sync_api import expect

    pictures = sorted(write_concept("hexagon", tmp_path / "hexagon").glob("*.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(pictures[0].read_bytes()[:200])  # a truncated PNG
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(studio_url)

    # Teach: five pictures and a broken one; the broken one is refused, with the reason beside it.
    page.locator("#teach-files input[type=file]").set_input_files([*map(str, pictures), str(broken)])
    verdicts = page.locator("#teach-verdicts")
    expect(verdicts).to_contain_text(f"{len(pictures)} of {len(pictures) + 1} files accepted", timeout=60_000)
    expect(verdicts).to_contain_text("refused broken.png")
    expect(page.locator("#teach-checked img")).to_have_count(len(pictures) + 1)  # the refusal has its tile
    page.screenshot(path=screenshots / "teach-checked.png", full_page=True)

    fill(page, "teach-name", "hexagon")
    fill(page, "teach-prompt", INSTANCE_PROMPT)
    fill(page, "teach-steps", 40)
    fill(page, "teach-extra", "validation.steps=4\nvalidation.images_per_prompt=1\ntraining.checkpoint_every=0")
    fill(page, "teach-eval-steps", 4)
    fill(page, "teach-eval-images", 2)
    page.locator("#teach-submit").click()
    status = page.locator("#teach-status")
    expect(status).to_contain_text(re.compile(r"hexagon: (started|training|registering)"), timeout=30_000)
    expect(page.locator("#teach-log textarea")).to_have_value(
        re.compile(r"\[train\] .* \d+/40"), timeout=TRAINING_S * 1000
    )
    expect(status).to_contain_text(re.compile("hexagon: (succeeded|failed|cancelled)"), timeout=TRAINING_S * 1000)
    expect(status).to_contain_text("hexagon: succeeded")
    expect(page.locator("#teach-grids img").first).to_be_visible(timeout=30_000)  # the run's logged grid
    page.screenshot(path=screenshots / "teach-done.png", full_page=True)

    # Models: the version is listed, and passes the gate (it is the first, with its metrics).
    page.get_by_role("tab", name="Models").click()
    page.locator("#models-refresh").click()
    expect(page.locator("#models-table")).to_contain_text("hexagon", timeout=30_000)
    fill(page, "models-name", "hexagon")
    fill(page, "models-version", 1)
    page.locator("#models-promote").click()
    verdict = page.locator("#models-verdict")
    expect(verdict).to_contain_text("Promoted hexagon v1 to champion", timeout=30_000)

    # A second version registered without an evaluation: the gate refuses it and says why.
    _register_unevaluated(tmp_path, "hexagon")
    fill(page, "models-version", 2)
    page.locator("#models-promote").click()
    expect(verdict).to_contain_text("The gate refused hexagon v2", timeout=30_000)
    expect(verdict).to_contain_text("has no value; evaluate it first")
    page.screenshot(path=screenshots / "models-gate.png", full_page=True)

    page.locator("#models-deploy").click()
    expect(page.locator("#models-deploy-status")).to_contain_text("succeeded", timeout=300_000)

    # A version's lineage and grids; two versions side by side on the same prompt and seed; a
    # rollback with no earlier champion is refused, and the page says why.
    page.locator("#models-show").click()
    expect(page.locator("#models-details")).to_contain_text("hexagon v2", timeout=30_000)
    expect(page.locator("#models-grids img").first).to_be_visible(timeout=30_000)
    page.get_by_text("Compare two versions on the same prompts and seeds").click()
    fill(page, "compare-a", 1)
    fill(page, "compare-b", 2)
    fill(page, "compare-prompts", "a sks shape on a gray background")
    fill(page, "compare-steps", 6)
    page.locator("#compare-submit").click()
    expect(page.locator("#compare-row-a img")).to_have_count(2, timeout=60_000)  # seeds 0 and 1
    expect(page.locator("#compare-row-b img")).to_have_count(2, timeout=60_000)
    page.locator("#models-rollback").click()
    expect(page.get_by_text("has no earlier champion than version 1")).to_be_visible(timeout=30_000)

    # Generate with the champion; the image appears with its recipe and re-renders identically.
    page.get_by_role("tab", name="Generate").click()
    fill(page, "gen-prompt", "a sks shape on a gray background")
    fill(page, "gen-adapters", "hexagon@champion")
    fill(page, "gen-steps", 10)
    page.locator("#gen-submit").click()
    expect(page.locator("#gen-gallery img").first).to_be_visible(timeout=120_000)
    expect(page.locator("#gen-recipe")).to_contain_text("hexagon@champion")
    page.locator("#gen-rerender").click()
    expect(page.locator("#gen-rerendered")).to_contain_text("identical to the original", timeout=120_000)
    page.get_by_role("tab", name="img2img picture").click()
    page.locator("#gen-init input[type=file]").set_input_files(str(pictures[1]))
    page.locator("#gen-mode").get_by_text("img2img").click()
    page.locator("#gen-submit").click()
    expect(page.locator("#gen-recipe")).to_contain_text("init_image_sha256", timeout=120_000)
    expect(page.locator("#gen-gallery img")).to_have_count(3)  # txt2img, its re-render, img2img
    page.screenshot(path=screenshots / "generate.png", full_page=True)

    # Use cases: an ad brief becomes a contact sheet of variants; a try-on shows before and after.
    page.get_by_role("tab", name="Use cases").click()
    fill(page, "ad-product", "hexagon@champion")
    fill(page, "ad-brief", "a sks shape on a gray background\na sks shape on a black background")
    fill(page, "ad-variants", 2)
    fill(page, "ad-steps", 8)
    page.locator("#ad-submit").click()
    expect(page.locator("#ad-folder")).to_contain_text("recipe.yaml", timeout=120_000)
    expect(page.locator("#ad-sheet img")).to_be_visible()
    page.screenshot(path=screenshots / "ads.png", full_page=True)
    page.get_by_role("tab", name="Try-on: a garment on a person").click()
    person = tmp_path / "person.png"
    photo = Image.new("RGB", (64, 64), "white")
    photo.paste((90, 120, 160), (22, 6, 42, 60))  # a figure against a plain backdrop
    photo.save(person)
    page.locator("#tryon-photo input[type=file]").set_input_files(str(person))
    expect(page.locator("#tryon-photo img")).to_be_visible(timeout=30_000)
    fill(page, "tryon-garment", "hexagon@champion")
    fill(page, "tryon-prompt", "a sks shape on a gray background")
    fill(page, "tryon-steps", 8)
    page.locator("#tryon-region").get_by_text("upper").click()
    page.locator("#tryon-submit").click()
    expect(page.locator("#tryon-folder")).to_contain_text("Written to", timeout=120_000)
    expect(page.locator("#tryon-result img")).to_be_visible()


def _register_unevaluated(tmp_path: Path, name: str) -> None:
    from dreamloom.registry import download_artifact, register, resolve

    artifact = download_artifact(resolve(f"{name}@champion"))
    register(artifact, name)
