"""Load dreamloom artifacts the way users do, with diffusers alone, and render one image each.

Run as a script (``python tests/plain_diffusers.py cases.json out.npz``) by test_plain_diffusers.py;
it refuses to run if anything from dreamloom is imported. Each case names a base folder, a family
(sd, sdxl), how to load (lora, kohya, textual-inversion, controlnet, dreambooth, pivotal) and the
artifact (for DreamBooth its folder: the UNet and the text encoders it trained); the image is
rendered with a fixed seed at 64 px in two DPM-Solver steps, so the test can compare it with
dreamloom's own rendering of the same artifact.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    DPMSolverMultistepScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection


def render(pipe, case: dict) -> np.ndarray:
    extra = {"image": Image.open(case["control_image"]).convert("RGB")} if case.get("control_image") else {}
    return pipe(
        case["prompt"],
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
        **extra,
    ).images[0]


def load(case: dict):
    xl, kind, path = case["family"] == "sdxl", case["kind"], case["path"]
    fp32 = {"torch_dtype": torch.float32}  # as users name a dtype (diffusers keeps a folder's own otherwise)
    base = {**fp32, "safety_checker": None, "requires_safety_checker": False} if not xl else fp32
    if kind == "controlnet":
        pipeline = StableDiffusionXLControlNetPipeline if xl else StableDiffusionControlNetPipeline
        pipe = pipeline.from_pretrained(case["base"], controlnet=ControlNetModel.from_pretrained(path, **fp32), **base)
    elif kind == "dreambooth":  # the UNet, and the text encoders where they trained too
        pipeline = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
        folder = Path(path)
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", **fp32)
        encoders = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
        trained = {
            name: model.from_pretrained(folder / name, **fp32)
            for name, model in encoders.items()
            if (folder / name).is_dir()
        }
        pipe = pipeline.from_pretrained(case["base"], unet=unet, **trained, **base)
    else:
        pipe = (StableDiffusionXLPipeline if xl else StableDiffusionPipeline).from_pretrained(case["base"], **base)
    if kind in ("lora", "kohya", "pivotal"):
        pipe.load_lora_weights(path)
    if kind in ("textual-inversion", "pivotal"):
        embeddings = case["embeddings"]
        if xl:  # one embedding per text encoder, as diffusers' docs load SDXL embeddings
            tensors = load_file(embeddings)
            pipe.load_textual_inversion(
                tensors["clip_l"], token=case["token"], text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
            )
            pipe.load_textual_inversion(
                tensors["clip_g"], token=case["token"], text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
            )
        else:  # no token=: the file's key is its token, as diffusers' own textual-inversion files are
            pipe.load_textual_inversion(embeddings)
            if case["token"] not in pipe.tokenizer.get_vocab():
                raise SystemExit(f"the embedding registered no {case['token']} token")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def adapted_components(pipe) -> list[str]:
    """The pipeline's components that carry a LoRA adapter after loading."""
    names = ["unet", "text_encoder", "text_encoder_2"]
    return [name for name in names if getattr(getattr(pipe, name, None), "peft_config", None)]


def main(cases_file: str, out_file: str) -> None:
    cases = json.loads(Path(cases_file).read_text())
    images, adapted = {}, {}
    for case in cases:
        pipe = load(case)
        images[case["name"]] = render(pipe, case)
        adapted[case["name"]] = adapted_components(pipe)
        del pipe  # before the next loads: two SDXL pipelines in fp32 (14 GB each) do not fit 24 GB
        gc.collect()
    leaked = sorted(name for name in sys.modules if name.split(".")[0] == "dreamloom")
    if leaked:
        raise SystemExit(f"dreamloom was imported: {leaked[:5]}")
    np.savez(out_file, **images)
    print(json.dumps(adapted))


if __name__ == "__main__":
    main(*sys.argv[1:])
