"""LoRA in the kohya / A1111 key format, out and in.

kohya's sd-scripts (and A1111, ComfyUI, InvokeAI) name LoRA tensors after the module path with
dots turned into underscores: ``lora_unet_down_blocks_1_attentions_0_..._to_q.lora_down.weight``,
``.lora_up.weight`` and ``.alpha``; text-encoder keys start ``lora_te_text_model_...`` (SD 1.x/2.x)
or ``lora_te1_`` / ``lora_te2_`` (SDXL).

Export maps our diffusers-format file directly. Import goes through diffusers' own kohya loader
(``pipe.load_lora_weights``), then saves what it loaded in our format, so that every layout
diffusers understands is understood here.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreamloom.artifacts import ArtifactManifest, publish, read_manifest
from dreamloom.errors import ArtifactError, DreamloomError
from dreamloom.methods.lora import ADAPTER_NAME, WEIGHT_NAME, save_lora_modules

_DIFFUSERS_DOWN = (".lora.down.weight", ".lora_linear_layer.down.weight", ".lora_A.weight")
_DIFFUSERS_UP = (".lora.up.weight", ".lora_linear_layer.up.weight", ".lora_B.weight")


def export_kohya(artifact: Path, target: Path) -> Path:
    """Write the LoRA of ``artifact`` as one kohya-format safetensors file."""
    manifest = read_manifest(artifact)
    if manifest.artifact_kind != "lora":
        raise ArtifactError(
            f"{artifact} holds a {manifest.method} artifact; only LoRA artifacts export to kohya format"
        )
    path = Path(artifact) / WEIGHT_NAME
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as handle:
        adapter_metadata = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
    sdxl = manifest.base_model.get("family") == "sdxl"
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        component, module, direction = _split_diffusers_key(key)
        kohya_module = _kohya_module_name(component, module, sdxl)
        converted[f"{kohya_module}.lora_{direction}.weight"] = tensor
        if direction == "down":
            alpha = _alpha_for(adapter_metadata, component, module, rank=tensor.shape[0])
            converted[f"{kohya_module}.alpha"] = torch.tensor(float(alpha))
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        converted,
        str(target),
        metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0" if sdxl else "sd_v1"},
    )
    return target


def import_kohya(source: Path, base_model: str, output: Path, trigger_token: str | None = None) -> ArtifactManifest:
    """Turn a kohya-format LoRA file for ``base_model`` into a dreamloom LoRA artifact."""
    from dreamloom.models.base import load_base_model, pipeline_from_components, resolve_base_model

    source = Path(source)
    if source.suffix != ".safetensors" or not source.is_file():
        raise DreamloomError(f"{source} is not a .safetensors file; dreamloom never loads pickled (.pt/.ckpt) weights")
    ref = resolve_base_model(base_model)
    model = load_base_model(ref)
    pipe = pipeline_from_components(model)
    try:
        pipe.load_lora_weights(_for_this_text_encoder(load_file(str(source)), model), adapter_name=ADAPTER_NAME)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise DreamloomError(f"{source} is not a LoRA for {base_model} that diffusers can load: {exc}") from None
    modules = {"unet": pipe.unet}
    for index, encoder in enumerate(model.text_encoders):
        if getattr(encoder, "peft_config", None) and ADAPTER_NAME in encoder.peft_config:
            modules["text_encoder" if index == 0 else f"text_encoder_{index + 1}"] = encoder
    manifest = ArtifactManifest(
        method="lora",
        artifact_kind="lora",
        base_model=ref.to_dict(),
        trigger_token=trigger_token,
        instance_prompt=trigger_token or "",
        resolution=model.unet.config.sample_size * model.vae_scale_factor,
        dataset_hash="unknown (imported from kohya format)",
        config={"imported_from": str(source.absolute())},
        steps=0,
    )
    with tempfile.TemporaryDirectory() as staging:
        save_lora_modules(Path(staging), modules, model.is_sdxl, ADAPTER_NAME)
        return publish(Path(staging), output, manifest)


def _split_diffusers_key(key: str) -> tuple[str, str, str]:
    component, rest = key.split(".", 1)
    for down, up in zip(_DIFFUSERS_DOWN, _DIFFUSERS_UP, strict=True):
        if rest.endswith(down):
            return component, rest[: -len(down)], "down"
        if rest.endswith(up):
            return component, rest[: -len(up)], "up"
    raise ArtifactError(f"unexpected tensor {key!r} in a LoRA file")


def _kohya_module_name(component: str, module: str, sdxl: bool) -> str:
    if component == "unet":
        return "lora_unet_" + module.replace(".", "_")
    if not module.startswith("text_model."):
        module = "text_model." + module  # transformers 5 flattened CLIPTextModel; kohya keeps the old path
    prefix = {"text_encoder": "lora_te1_" if sdxl else "lora_te_", "text_encoder_2": "lora_te2_"}[component]
    return prefix + module.replace(".", "_")


def _alpha_for(metadata: dict, component: str, module: str, rank: int) -> float:
    patterns = metadata.get(f"{component}.alpha_pattern") or {}
    for pattern, alpha in patterns.items():
        if module.endswith(pattern):
            return alpha
    return metadata.get(f"{component}.lora_alpha", rank)


def _for_this_text_encoder(tensors: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """kohya names text-encoder modules ``text_model.encoder...``; transformers 5's CLIPTextModel
    has no ``text_model`` level, so those keys are renamed to match before diffusers loads them."""
    if any(hasattr(encoder, "text_model") for encoder in model.text_encoders):
        return tensors
    return {_drop_text_model_level(key): value for key, value in tensors.items()}


def _drop_text_model_level(key: str) -> str:
    for prefix in ("lora_te_", "lora_te1_", "lora_te2_"):
        if key.startswith(prefix + "text_model_"):
            return prefix + key[len(prefix + "text_model_") :]
    return key
