"""``dreamloom ad | tryon | design | edit``: the use cases, through the serving endpoint.

Each plans a recipe from its flags (checking every input first), has the server check it, renders
it and writes images, a contact sheet, an HTML index and the recipe. ``--recipe FILE`` renders a
written recipe again instead of planning one.
"""

from __future__ import annotations

from pathlib import Path

from dreamloom.cli.options import add_sampler_argument


def add_commands(commands) -> None:
    _add_ad(commands)
    _add_tryon(commands)
    _add_design(commands)
    _add_edit(commands)
    add_augment(commands)


def _common(command, kind: str) -> None:
    command.add_argument("--url", required=True, help="the Triton endpoint, e.g. localhost:8000")
    command.add_argument("--protocol", choices=("http", "grpc"), default="http")
    command.add_argument(
        "--model", help="the Triton model (default dreamloom; a DreamBooth model's own name; a recipe's own)"
    )
    command.add_argument("--out", type=Path, required=True, help="folder for the results (must not exist)")
    command.add_argument("--recipe", type=Path, help=f"render this {kind} recipe again (recipe.yaml or its folder)")
    command.add_argument("--seed", type=int, default=0, help="seed of the first image; the next ones count up")
    command.add_argument("--steps", type=int, default=25)
    command.add_argument("--guidance", type=float, default=7.5)
    add_sampler_argument(command)
    command.add_argument("--negative-prompt", default="")
    command.set_defaults(handler=_run, kind=kind)


def _add_ad(commands) -> None:
    command = commands.add_parser("ad", help="ad variants of a product concept, from a brief or prompts")
    command.add_argument("--product", help="the product concept, e.g. shoe@champion")
    command.add_argument("--product-weight", type=float, default=1.0)
    command.add_argument("--brief", type=Path, help="YAML with subject, scenes, negative_prompt, style_words")
    command.add_argument("--prompt-file", type=Path, help="one prompt per line")
    command.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    command.add_argument("--variants", type=int, default=4, help="images per prompt, each with its own seed")
    command.add_argument("--size", help="WIDTHxHEIGHT (multiples of 8); default: the model's")
    command.add_argument("--style", help="a brand style adapter (LoRA or hypernetwork), e.g. brand@champion")
    command.add_argument("--style-weight", type=float, default=0.6)
    command.add_argument("--layout", type=Path, help="a sketch or reference picture the ads follow")
    command.add_argument("--layout-adapter", help="the ControlNet that reads the layout, e.g. layout-canny@champion")
    command.add_argument("--condition", choices=("canny", "scribble"), default="canny")
    _common(command, "ad")


def _add_tryon(commands) -> None:
    command = commands.add_parser("tryon", help="a garment concept inpainted onto a person photo")
    command.add_argument("--garment", help="the garment concept, e.g. jacket@champion")
    command.add_argument("--person", type=Path, help="the person photo")
    command.add_argument("--prompt", default="", help="e.g. 'a person wearing a sks jacket'")
    command.add_argument("--mask", type=Path, help="white where the garment goes (the photo's size)")
    command.add_argument("--region", choices=("upper", "lower", "full"), help="compute the mask for this region")
    command.add_argument("--segmenter", help="hub id of a human-parsing segmentation model for --region")
    command.add_argument("--variants", type=int, default=2)
    command.add_argument("--strength", type=float, default=0.99)
    _common(command, "tryon")


def _add_design(commands) -> None:
    command = commands.add_parser("design", help="product variants that follow a sketch")
    command.add_argument("--sketch", type=Path, help="the sketch (or a reference picture)")
    command.add_argument("--controlnet", help="the ControlNet that reads it, e.g. sketch-scribble@champion")
    command.add_argument("--condition", choices=("canny", "scribble"), default="scribble")
    command.add_argument("--prompt", default="", help="what the product is")
    command.add_argument("--concept", help="a product or style concept to draw it in, e.g. brand@champion")
    command.add_argument("--variants", type=int, default=4)
    command.add_argument("--size", help="WIDTHxHEIGHT; default: the sketch's, to multiples of 8")
    command.add_argument("--control-scale", type=float, default=1.0)
    _common(command, "design")


def _add_edit(commands) -> None:
    command = commands.add_parser("edit", help="img2img edits or object removal over an image or frames")
    command.add_argument("--source", type=Path, help="an image or a folder of frames")
    command.add_argument("--prompt", default="", help="the edit, e.g. 'cinematic lighting, film grain'")
    command.add_argument("--strength", type=float, default=0.5, help="0.01 (barely) to 1 (repaint)")
    command.add_argument("--remove", type=Path, help="a mask (white) of what to remove, the frames' size")
    command.add_argument("--adapter", default="", help="adapters to edit with, e.g. brand@champion*0.5")
    _common(command, "edit")


def _run(args) -> None:
    from dreamloom.errors import DreamloomError
    from dreamloom.samplers import sampler_name
    from dreamloom.serving.client import ServingClient
    from dreamloom.usecases.jobs import load_recipe, render

    if args.recipe:
        recipe, source = load_recipe(args.recipe)
        if recipe.kind != args.kind:
            raise DreamloomError(f"{args.recipe} is a {recipe.kind} recipe; run dreamloom {recipe.kind} --recipe")
        staged = None
    else:
        recipe, staged = PLANNERS[args.kind](args)
        recipe = recipe.model_copy(update={"sampler": sampler_name(args.sampler)})
        source = None
    recipe = recipe.model_copy(update={"model": args.model or recipe.model})
    with ServingClient(args.url, args.protocol, recipe.model) as client:
        out = render(recipe, client, args.out, staged=staged, source=source)
    if recipe.kind == "tryon":
        _before_after(out)
    print(f"open {out / 'index.html'} (contact sheet: {out / 'contact-sheet.png'})")


def _plan_ad(args):
    from dreamloom.usecases.ad import plan_ads, read_brief, read_prompt_file
    from dreamloom.usecases.jobs import parse_size

    negative = args.negative_prompt
    if args.brief:
        brief = read_brief(args.brief)
        prompts, negative = brief.prompts(), negative or brief.negative_prompt
    elif args.prompt_file:
        prompts = read_prompt_file(args.prompt_file)
    else:
        prompts = args.prompt
    return plan_ads(
        args.product or "",
        prompts,
        variants=args.variants,
        seed=args.seed,
        size=parse_size(args.size),
        style=args.style,
        style_weight=args.style_weight,
        layout=args.layout,
        layout_adapter=args.layout_adapter,
        condition_kind=args.condition,
        negative_prompt=negative,
        steps=args.steps,
        guidance=args.guidance,
        product_weight=args.product_weight,
    )


def _plan_tryon(args):
    from dreamloom.errors import DreamloomError
    from dreamloom.usecases.tryon import plan_tryon

    if not args.person:
        raise DreamloomError("try-on needs --person: the photo to dress")
    return plan_tryon(
        args.garment or "",
        args.person,
        args.prompt,
        mask=args.mask,
        region=args.region,
        segmenter=args.segmenter,
        variants=args.variants,
        seed=args.seed,
        strength=args.strength,
        steps=args.steps,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
    )


def _plan_design(args):
    from dreamloom.errors import DreamloomError
    from dreamloom.usecases.design import plan_design
    from dreamloom.usecases.jobs import parse_size

    if not args.sketch:
        raise DreamloomError("design needs --sketch: the drawing to follow")
    return plan_design(
        args.sketch,
        args.controlnet or "",
        args.prompt,
        condition_kind=args.condition,
        variants=args.variants,
        seed=args.seed,
        concept=args.concept,
        size=parse_size(args.size),
        control_scale=args.control_scale,
        steps=args.steps,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
    )


def _plan_edit(args):
    from dreamloom.errors import DreamloomError
    from dreamloom.usecases.edit import plan_edit

    if not args.source:
        raise DreamloomError("edit needs --source: an image or a folder of frames")
    return plan_edit(
        args.source,
        args.prompt,
        strength=args.strength,
        remove=args.remove,
        seed=args.seed,
        adapter=args.adapter,
        steps=args.steps,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
    )


PLANNERS = {"ad": _plan_ad, "tryon": _plan_tryon, "design": _plan_design, "edit": _plan_edit}


def _before_after(out: Path) -> None:
    from PIL import Image

    from dreamloom.usecases.tryon import before_after

    person = Image.open(out / "inputs" / "person.png").convert("RGB")
    results = [Image.open(path).convert("RGB") for path in sorted((out / "images").glob("*.png"))]
    before_after(person, results).save(out / "before-after.png")
    print(f"before/after: {out / 'before-after.png'}")


def add_augment(commands) -> None:
    command = commands.add_parser(
        "augment", help="augment a small labelled dataset with per-class adapters, and measure the gain"
    )
    command.add_argument("--data", type=Path, required=True, help="class subfolders with a few real images each")
    command.add_argument("--eval-data", type=Path, required=True, help="held-out real images, same class subfolders")
    command.add_argument("--url", required=True, help="the Triton endpoint serving the base the adapters train on")
    command.add_argument("--serving-store", type=Path, help="the serving store that Triton reads (for deploys)")
    command.add_argument("--out", type=Path, required=True, help="folder for the dataset and report (must not exist)")
    command.add_argument("--preset", choices=("default", "toy"), default="default", help="toy: tuned for the toy world")
    command.add_argument("--launcher", choices=("local", "ray", "kuberay"), default="local")
    command.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any experiment setting, e.g. per_class=32, classifier=google/efficientnet-b0",
    )
    command.set_defaults(handler=_augment)


def _augment(args) -> None:
    import json

    from dreamloom.config import parse_override
    from dreamloom.serving.repository import ServingStore
    from dreamloom.usecases.augment import augment_settings, run_experiment

    settings = augment_settings(args.preset, dict(parse_override(item) for item in args.set))
    store = ServingStore(args.serving_store) if args.serving_store else ServingStore()
    report = run_experiment(args.data, args.eval_data, args.out, args.url, store, settings, args.launcher)
    print(json.dumps(report.to_dict(), indent=1))
    print(f"\naugmented dataset: {report.dataset} (manifest.json tells real from synthetic)")
    for metric in ("balanced_accuracy", "balanced_recall"):
        before, after = getattr(report.real_only, metric), getattr(report.augmented, metric)
        print(f"{metric.replace('_', ' ')}: {before:.3f} on real images only -> {after:.3f} with synthetic ones")
