"""The studio's page (Gradio Blocks): Teach, Models and Generate, each a thin layer over
``teach``, ``models`` and ``generate``. Every handler shows a problem the user can fix as a
message on the page, never a stack trace."""

from __future__ import annotations

import functools
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from dreamloom.advisor import QUESTIONS
from dreamloom.errors import DreamloomError, as_user_error
from dreamloom.methods import METHODS
from dreamloom.samplers import DEFAULT_SAMPLER, SAMPLERS
from dreamloom.serving.protocol import ImageRequest
from dreamloom.studio import generate, models, teach, usecases
from dreamloom.studio.jobs import Job, JobView

POLL_S = 1.0


@dataclass
class StudioSettings:
    """Where the studio keeps its runs, what it serves through, and the Teach form's defaults."""

    work: Path
    triton_url: str = ""
    serving_store: Path | None = None
    model: str = "dreamloom"  # the Triton model serving the base
    base_model: str = "toy"
    resolution: int = 64
    steps: int = 300
    batch_size: int = 2
    learning_rate: float = 1e-3


@dataclass
class Studio:
    settings: StudioSettings
    jobs: dict[str, Job] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, job: Job) -> str:
        with self._lock:
            key = f"{len(self.jobs) + 1}: {job.name}"
            self.jobs[key] = job.start()
        return key

    def view(self, key: str | None) -> JobView | None:
        job = self.jobs.get(key or "")
        return job.view() if job else None


def shown(handler):
    """Run ``handler``; a problem the user can fix becomes ``gr.Error`` (shown on the page)."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            known = as_user_error(exc)
            if known is None:
                raise
            raise gr.Error(str(known), duration=None) from None

    return wrapper


def build(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="dreamloom studio", analytics_enabled=False) as page:
        gr.Markdown("# dreamloom studio\nTeach a concept, judge and promote its versions, generate with them.")
        with gr.Tab("Teach", id="teach"):
            _teach_tab(studio)
        with gr.Tab("Models", id="models"):
            _models_tab(studio)
        with gr.Tab("Generate", id="generate"):
            _generate_tab(studio)
        with gr.Tab("Use cases", id="usecases"):
            _usecases_tab(studio)
    return page


# ----- Teach -----


def _teach_tab(studio: Studio) -> None:
    defaults = studio.settings
    data_folder = gr.State(None)
    job_key = gr.State(None)
    with gr.Row():
        with gr.Column(scale=2):
            files = gr.File(label="Pictures of the concept", file_count="multiple", elem_id="teach-files")
            resolution = gr.Number(
                defaults.resolution, label="Resolution", precision=0, info=teach.field_help("data.resolution")
            )
            verdicts = gr.Markdown(teach.verdicts_markdown([]), elem_id="teach-verdicts")
            checked = gr.Gallery(label="Checked pictures", columns=5, height=260, elem_id="teach-checked")
        with gr.Column(scale=1), gr.Accordion("Which method? (the advisor)", open=False):
            concepts = gr.Number(1, label=QUESTIONS["concepts"][0], precision=0)
            answers = {
                name: gr.Checkbox(label=question) for name, (question, kind) in QUESTIONS.items() if kind is bool
            }
            advise = gr.Button("Recommend")
            advice = gr.Markdown(elem_id="teach-advice")
    with gr.Row():
        name = gr.Textbox(label="Register as (model name)", placeholder="e.g. red-sneaker", elem_id="teach-name")
        method = gr.Dropdown(list(METHODS), value="lora", label="Method", info=teach.field_help("method"))
        base_model = gr.Textbox(defaults.base_model, label="Base model", info=teach.field_help("base_model"))
    with gr.Row():
        instance_prompt = gr.Textbox(
            label="Instance prompt", info=teach.field_help("data.instance_prompt"), elem_id="teach-prompt"
        )
        class_prompt = gr.Textbox(
            label="Class prompt (prior preservation)", info=teach.field_help("prior.class_prompt")
        )
    with gr.Row():
        steps = gr.Number(
            defaults.steps, label="Steps", precision=0, info=teach.field_help("training.steps"), elem_id="teach-steps"
        )
        batch_size = gr.Number(
            defaults.batch_size, label="Batch size", precision=0, info=teach.field_help("training.batch_size")
        )
        learning_rate = gr.Number(
            defaults.learning_rate, label="Learning rate", info=teach.field_help("optimizer.learning_rate")
        )
    extra = gr.Textbox(
        label="More settings, one KEY=VALUE per line (any run config field)",
        placeholder="lora.rank=16\nvalidation.every=100",
        lines=2,
        elem_id="teach-extra",
    )
    with gr.Row():
        launcher = gr.Radio(
            [(label, key) for key, label in teach.LAUNCHERS.items()], value="local", label="Where it trains"
        )
        ray_address = gr.Textbox(label="Ray address (ray launcher)", placeholder="http://HOST:8265")
        kfp_host = gr.Textbox(label="KFP host (KFP)", placeholder="http://localhost:8080")
    with gr.Row():
        eval_steps = gr.Number(
            0, label="Evaluation: steps per image (0: default)", precision=0, elem_id="teach-eval-steps"
        )
        eval_images = gr.Number(
            0, label="Evaluation: images per prompt (0: default)", precision=0, elem_id="teach-eval-images"
        )
    with gr.Row():
        submit = gr.Button("Teach", variant="primary", elem_id="teach-submit")
        cancel = gr.Button("Cancel", variant="stop", elem_id="teach-cancel")
    status = gr.Markdown("No run yet.", elem_id="teach-status")
    with gr.Row():
        losses = gr.LinePlot(x="step", y="loss", label="Loss", height=220)
        grids = gr.Gallery(label="Sample grids as they are logged", columns=3, height=220, elem_id="teach-grids")
    log = gr.Textbox(label="Log", lines=8, max_lines=8, autoscroll=True, elem_id="teach-log")

    @shown
    def check(uploaded, pixels):
        folder = studio.settings.work / "uploads" / uuid.uuid4().hex
        results = teach.check_uploads([Path(path) for path in uploaded or []], folder, int(pixels))
        thumbs = [(v.thumbnail, v.caption) for v in results if v.thumbnail is not None]
        kept = folder if any(v.accepted for v in results) else None
        return teach.verdicts_markdown(results), thumbs, kept

    files.change(check, [files, resolution], [verdicts, checked, data_folder])
    resolution.change(check, [files, resolution], [verdicts, checked, data_folder])

    @shown
    def recommend(base, how_many, *flags):
        advice_ = teach.advise(base, how_many, **dict(zip(answers, flags, strict=True)))
        return teach.advice_markdown(advice_), advice_.method

    advise.click(recommend, [base_model, concepts, *answers.values()], [advice, method])

    @shown
    def start(folder, *values):
        if folder is None:
            raise DreamloomError("no accepted pictures yet: drop pictures of the concept first")
        form = teach.TeachForm(data=Path(folder), **dict(zip(FORM_FIELDS, values, strict=True)))
        key = studio.add(teach.teaching_job(form, studio.settings.work / "runs"))
        return key, f"**{form.name}: started** ({teach.LAUNCHERS[form.launcher]})"

    form_inputs = [name, method, base_model, instance_prompt, resolution, steps, batch_size, learning_rate]
    form_inputs += [class_prompt, extra, launcher, ray_address, kfp_host, eval_steps, eval_images]
    submit.click(start, [data_folder, *form_inputs], [job_key, status])
    cancel.click(lambda key: studio.jobs[key].cancel() if key in studio.jobs else None, job_key, None)

    pictures = _PictureCache()

    def poll(key):
        view = studio.view(key)
        if view is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        steps, values = zip(*view.losses, strict=True) if view.losses else ((), ())
        # Typed even when empty: an untyped first frame would fix the axis as categories.
        curve = pd.DataFrame({"step": pd.Series(steps, dtype=int), "loss": pd.Series(values, dtype=float)})
        return view.summary(), curve, pictures.of_run(view.run_id), view.log

    gr.Timer(POLL_S).tick(poll, job_key, [status, losses, grids, log])


FORM_FIELDS = (
    "name", "method", "base_model", "instance_prompt", "resolution", "steps", "batch_size", "learning_rate",
    "class_prompt", "extra", "launcher", "ray_address", "kfp_host", "eval_steps", "eval_images_per_prompt",
)  # fmt: skip


class _PictureCache:
    """A run's logged grids: listed every few polls, each downloaded from MLflow once."""

    EVERY = 5

    def __init__(self):
        self._grids: dict[str, object] = {}  # artifact path -> picture
        self._listed: dict[str, list[str]] = {}  # run id -> its grids' paths
        self._polls = 0

    def of_run(self, run_id: str | None) -> list:
        if not run_id:
            return []
        self._polls += 1
        if run_id not in self._listed or self._polls % self.EVERY == 0:
            try:
                self._listed[run_id] = models.logged_grids(run_id)
            except Exception:  # the run may not exist yet on the tracking server: try again later
                self._listed.setdefault(run_id, [])
        for grid in self._listed[run_id]:
            if grid not in self._grids:
                self._grids[grid] = models.load(grid)
        return [(self._grids[grid], f"training: {models.caption(grid)}") for grid in self._listed[run_id]]


# ----- Models -----


def _models_tab(studio: Studio) -> None:
    deploy_key = gr.State(None)
    with gr.Row():
        refresh = gr.Button("Refresh", elem_id="models-refresh")
        filter_name = gr.Textbox(label="Model (empty: all)", scale=3)
    table = gr.Dataframe(headers=models.TABLE_COLUMNS, interactive=False, elem_id="models-table")
    with gr.Row():
        name = gr.Textbox(label="Model", elem_id="models-name")
        version = gr.Textbox(label="Version", elem_id="models-version")
        show = gr.Button("Show", elem_id="models-show")
    details = gr.Markdown(elem_id="models-details")
    pictures = gr.Gallery(label="Grids", columns=3, height=260, elem_id="models-grids")
    with gr.Row():
        reason = gr.Textbox(label="Reason (recorded; required to force past the gate)", elem_id="models-reason")
        force = gr.Checkbox(label="Force past the gate")
    with gr.Row():
        promote = gr.Button("Promote through the gate", variant="primary", elem_id="models-promote")
        roll_back = gr.Button("Roll back the champion", elem_id="models-rollback")
        deploy = gr.Button("Deploy the champion", elem_id="models-deploy")
    verdict = gr.Markdown(elem_id="models-verdict")
    deploy_status = gr.Markdown(elem_id="models-deploy-status")
    with gr.Accordion("Compare two versions on the same prompts and seeds", open=False):
        with gr.Row():
            first = gr.Textbox(label="Version A", elem_id="compare-a")
            second = gr.Textbox(label="Version B", elem_id="compare-b")
            prompts = gr.Textbox(label="Prompts, one per line", lines=3, elem_id="compare-prompts")
            seed = gr.Number(0, label="First seed", precision=0)
            images = gr.Number(2, label="Images per prompt", precision=0, elem_id="compare-images")
            steps = gr.Number(20, label="Steps", precision=0, elem_id="compare-steps")
        run_compare = gr.Button("Compare", elem_id="compare-submit")
        row_a = gr.Gallery(label="A", columns=6, elem_id="compare-row-a")
        row_b = gr.Gallery(label="B", columns=6, elem_id="compare-row-b")

    refresh.click(shown(lambda who: models.version_table(who.strip() or None)), filter_name, table)
    show.click(shown(lambda n, v: models.version_details(n.strip(), v.strip())), [name, version], [details, pictures])

    @shown
    def judged(n, v, why, forced):
        _promotion, text = models.promote_version(n.strip(), v.strip(), why, forced)
        return text, models.version_table(n.strip())

    promote.click(judged, [name, version, reason, force], [verdict, table])
    roll_back.click(
        shown(lambda n: (models.roll_back(n.strip()), models.version_table(n.strip()))), name, [verdict, table]
    )

    @shown
    def start_deploy(n):
        settings = studio.settings
        job = models.deploy_job(
            n.strip(), settings.triton_url, settings.serving_store, settings.model, settings.work / "runs"
        )
        return studio.add(job)

    deploy.click(start_deploy, name, deploy_key)
    gr.Timer(POLL_S).tick(lambda key: _deploy_line(studio.view(key)), deploy_key, deploy_status)

    @shown
    def compared(n, a, b, text, first_seed, how_many, n_steps):
        prompt_list = [line.strip() for line in text.splitlines() if line.strip()]
        if not prompt_list:
            raise DreamloomError("write at least one prompt")
        versions = (a.strip(), b.strip())
        rows = models.compare(n.strip(), versions, prompt_list, int(first_seed), int(how_many), int(n_steps))
        return rows[0], rows[1]

    run_compare.click(compared, [name, first, second, prompts, seed, images, steps], [row_a, row_b])


def _deploy_line(view: JobView | None):
    if view is None:
        return gr.skip()
    last = next((line for line in reversed(view.log.splitlines()) if line.strip()), "")
    return f"{view.summary()}\n\n`{last[-200:]}`" if last else view.summary()


# ----- Generate -----


def _generate_tab(studio: Studio) -> None:
    gallery_state = gr.State([])
    with gr.Row():
        with gr.Column(scale=2):
            mode = gr.Radio(
                ["txt2img", "img2img", "inpaint", "controlnet"], value="txt2img", label="Mode", elem_id="gen-mode"
            )
            prompt = gr.Textbox(label="Prompt", elem_id="gen-prompt")
            negative = gr.Textbox(label="Negative prompt")
            adapters = gr.Textbox(
                label="Adapters: NAME@ALIAS or NAME/VERSION, *weight, comma-separated",
                placeholder="red-sneaker@champion*0.8, studio-light@champion*0.5",
                elem_id="gen-adapters",
            )
            with gr.Row():
                sampler = gr.Dropdown(list(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler")
                steps = gr.Number(25, label="Steps", precision=0, elem_id="gen-steps")
                guidance = gr.Number(7.5, label="Guidance")
                seed = gr.Number(0, label="Seed", precision=0)
            with gr.Row():
                width = gr.Number(0, label="Width (0: the base's)", precision=0)
                height = gr.Number(0, label="Height (0: the base's)", precision=0)
                strength = gr.Slider(0.01, 1.0, 0.75, label="Strength (img2img, inpaint)")
                control_scale = gr.Slider(0.0, 2.0, 1.0, label="ControlNet scale")
            with gr.Tab("img2img picture"):
                init_image = gr.Image(type="pil", label="Start from", elem_id="gen-init")
            with gr.Tab("inpaint: paint the area to repaint"):
                editor = gr.ImageEditor(type="pil", label="Picture and mask")
            with gr.Tab("ControlNet condition"):
                control_upload = gr.Image(type="pil", label="From a picture")
                sketch = gr.Sketchpad(type="pil", label="Or sketch it", canvas_size=(512, 512))
                condition_kind = gr.Radio(list(generate.CONDITIONS), value="canny", label="Condition")
                condition_preview = gr.Image(label="The condition the ControlNet follows", interactive=False)
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="gen-submit")
                again = gr.Button("Re-render the selected image from its recipe", elem_id="gen-rerender")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Gallery", columns=3, height=420, elem_id="gen-gallery")
            selected = gr.Number(-1, visible=False)
            recipe = gr.JSON(label="Recipe of the selected image", elem_id="gen-recipe")
            rerendered = gr.Markdown(elem_id="gen-rerendered")

    def _condition(upload, drawn, kind):
        return generate.condition(upload if upload is not None else drawn, kind)

    @shown
    def preview(upload, drawn, kind):
        if upload is None and not (isinstance(drawn, dict) and drawn.get("composite") is not None):
            return None
        return _condition(upload, drawn, kind)

    for trigger in (control_upload.change, condition_kind.change):
        trigger(preview, [control_upload, sketch, condition_kind], condition_preview)

    @shown
    def make(
        kept,
        chosen_mode,
        text,
        avoid,
        named,
        chosen_sampler,
        n_steps,
        scale,
        the_seed,
        w,
        h,
        how_far,
        control,
        start,
        edited,
        upload,
        drawn,
        kind,
    ):
        pictures = {}
        if chosen_mode == "img2img":
            if start is None:
                raise DreamloomError("img2img needs a picture to start from")
            pictures["init_image"] = generate.png_bytes(start)
        elif chosen_mode == "inpaint":
            picture, mask = generate.painted_mask(edited)
            pictures.update(init_image=generate.png_bytes(picture), mask=generate.png_bytes(mask))
        elif chosen_mode == "controlnet":
            pictures["control_image"] = generate.png_bytes(_condition(upload, drawn, kind))
        request = ImageRequest(
            text, negative_prompt=avoid, mode=chosen_mode, adapter=named.strip(), sampler=chosen_sampler,
            steps=int(n_steps), guidance=float(scale), width=int(w), height=int(h), seed=int(the_seed),
            strength=float(how_far), control_scale=float(control), **pictures,
        )  # fmt: skip
        rendered = generate.render(studio.settings.triton_url, request, studio.settings.model)
        kept = [*kept, rendered]
        return kept, _gallery(kept), rendered.recipe, len(kept) - 1, ""

    inputs = [gallery_state, mode, prompt, negative, adapters, sampler, steps, guidance, seed, width, height]
    inputs += [strength, control_scale, init_image, editor, control_upload, sketch, condition_kind]
    go.click(make, inputs, [gallery_state, gallery, recipe, selected, rerendered])

    def choose(kept, event: gr.SelectData):
        return kept[event.index].recipe, event.index

    gallery.select(choose, gallery_state, [recipe, selected])

    @shown
    def remake(kept, index):
        if not kept or index < 0:
            raise DreamloomError("generate an image first, then pick it in the gallery")
        again_, identical = generate.rerender(studio.settings.triton_url, kept[int(index)], studio.settings.model)
        kept = [*kept, again_]
        verdict = "identical to the original, pixel for pixel" if identical else "**different** from the original"
        return kept, _gallery(kept), f"Re-rendered image {int(index) + 1}: {verdict}."

    again.click(remake, [gallery_state, selected], [gallery_state, gallery, rerendered])


# ----- Use cases -----


def _usecases_tab(studio: Studio) -> None:
    out = studio.settings.work / "usecases"
    with gr.Tab("Ads: a brief becomes a grid of variants"):
        with gr.Row():
            product = gr.Textbox(label="Product (NAME@ALIAS)", placeholder="red-sneaker@champion", elem_id="ad-product")
            style = gr.Textbox(label="Style adapter (optional)", placeholder="brand-look@champion")
            variants = gr.Number(4, label="Variants per prompt", precision=0, elem_id="ad-variants")
            steps = gr.Number(25, label="Steps", precision=0, elem_id="ad-steps")
            seed = gr.Number(0, label="First seed", precision=0)
        brief = gr.Textbox(label="Brief: one prompt per line", lines=3, elem_id="ad-brief")
        with gr.Accordion("Layout (optional): a sketch or reference the ads follow", open=False), gr.Row():
            layout = gr.Image(type="pil", label="Layout")
            layout_adapter = gr.Textbox(label="ControlNet (NAME@ALIAS)")
            condition_kind = gr.Radio(["canny", "scribble"], value="canny", label="Condition")
        make_ads = gr.Button("Make the ads", variant="primary", elem_id="ad-submit")
        sheet = gr.Image(label="Contact sheet", interactive=False, elem_id="ad-sheet")
        ad_folder = gr.Markdown(elem_id="ad-folder")

    @shown
    def run_ads(name, look, how_many, n_steps, first, text, sketch, controlnet, kind):
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        args = (studio.settings.triton_url, name, prompts, how_many, first, n_steps, out)
        picture, folder = usecases.ads(*args, style=look, layout=sketch, layout_adapter=controlnet, condition_kind=kind)
        return picture, f"Written to `{folder}` (images, contact sheet, recipe.yaml to re-render it)"

    ad_inputs = [product, style, variants, steps, seed, brief, layout, layout_adapter, condition_kind]
    make_ads.click(run_ads, ad_inputs, [sheet, ad_folder])

    with gr.Tab("Try-on: a garment on a person"):
        with gr.Row():
            garment = gr.Textbox(
                label="Garment (NAME@ALIAS)", placeholder="denim-jacket@champion", elem_id="tryon-garment"
            )
            prompt = gr.Textbox(label="Prompt", placeholder="a person wearing a sks jacket", elem_id="tryon-prompt")
            region = gr.Radio(
                list(usecases.REGIONS), value=usecases.PAINTED, label="Garment area", elem_id="tryon-region"
            )
            tryon_variants = gr.Number(2, label="Variants", precision=0)
            tryon_steps = gr.Number(30, label="Steps", precision=0, elem_id="tryon-steps")
        with gr.Row():
            photo = gr.Image(type="pil", label="Photo of the person", elem_id="tryon-photo")
            person = gr.ImageEditor(type="pil", label="Paint the garment area on it", elem_id="tryon-person")
        dress = gr.Button("Try it on", variant="primary", elem_id="tryon-submit")
        before_after = gr.Image(label="Before and after", interactive=False, elem_id="tryon-result")
        tryon_folder = gr.Markdown(elem_id="tryon-folder")

    @shown
    def run_tryon(name, text, area, how_many, n_steps, picture, painted):
        args = (studio.settings.triton_url, name, picture, painted, text, area, how_many, 0, n_steps, out)
        result, folder = usecases.tryon(*args)
        return result, f"Written to `{folder}`"

    # The editor gets the photo from the server: an editor's own upload could reach the server
    # after a click that reads it (seen in Gradio 6.31).
    photo.upload(usecases.on_canvas, photo, person)
    tryon_inputs = [garment, prompt, region, tryon_variants, tryon_steps, photo, person]
    dress.click(run_tryon, tryon_inputs, [before_after, tryon_folder])


def _gallery(kept: list[generate.Rendered]) -> list:
    return [(item.image, f"{item.request.prompt} (seed {item.request.seed})") for item in kept]


LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_UPLOAD = "50mb"  # per file; each picture is then checked for its pixel count before decoding


def check_exposure(host: str, auth: list[tuple[str, str]], open_to_all: bool) -> None:
    """The studio trains, promotes and deploys: off the loopback interface it needs users (or an
    explicit statement that something in front of it authenticates)."""
    if host not in LOOPBACK and not auth and not open_to_all:
        raise DreamloomError(
            f"the studio can train, promote and deploy; listening on {host} it needs users: pass --auth-file "
            "(user:password lines) or set DREAMLOOM_STUDIO_AUTH, or --no-auth when a proxy in front authenticates"
        )


def read_users(text: str, source: str) -> list[tuple[str, str]]:
    """``user:password`` entries, one per line or comma-separated."""
    users = []
    for entry in text.replace(",", "\n").splitlines():
        if not entry.strip():
            continue
        user, separator, password = entry.strip().partition(":")
        if not separator or not user or not password:
            raise DreamloomError(f"{source}: expected user:password entries, got one without both parts")
        users.append((user, password))
    return users


def launch(
    studio: Studio,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: list[tuple[str, str]] | None = None,
    root_path: str | None = None,
    block: bool = True,
):
    """Serve the page; ``block=False`` returns once it listens (tests)."""
    page = build(studio)
    page.queue(default_concurrency_limit=4)
    page.launch(
        server_name=host,
        server_port=port,
        auth=auth or None,
        root_path=root_path or None,
        prevent_thread_lock=not block,
        max_file_size=MAX_UPLOAD,
        ssr_mode=False,
        share=False,
        quiet=True,
        footer_links=[],
    )
    return page
