"""The kohya / A1111 key layout that adapter files of the UNet and text encoders share.

kohya's sd-scripts (and A1111, ComfyUI, InvokeAI, LyCORIS) name each tensor after its module path
with dots turned into underscores, then the tensor's own name: ``lora_unet_down_blocks_1_
attentions_0_..._to_q.lora_down.weight`` (LoRA), ``...to_q.hada_w1_a`` (LoHa), ``...to_q.lokr_w1``
(LoKr), and ``...to_q.alpha``. Text-encoder modules start ``lora_te_text_model_...`` (SD 1.x/2.x)
or ``lora_te1_`` / ``lora_te2_`` (SDXL). Each method maps its own tensors; this module maps the
module names, both ways.
"""

from __future__ import annotations

import torch

PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
SDXL_FIRST_TEXT_ENCODER = "lora_te1_"


def module_name(component: str, module: str, sdxl: bool) -> str:
    """kohya's name of ``module`` (a dotted path in ``component``)."""
    if component == "unet":
        return PREFIXES["unet"] + module.replace(".", "_")
    if not module.startswith("text_model."):
        module = "text_model." + module  # transformers 5 flattened CLIPTextModel; kohya keeps the old path
    prefix = SDXL_FIRST_TEXT_ENCODER if (sdxl and component == "text_encoder") else PREFIXES[component]
    return prefix + module.replace(".", "_")


def module_index(model) -> dict[str, tuple[str, str]]:
    """kohya module name -> (component, module path) for every module of a loaded base."""
    components = {"unet": model.unet}
    for index, encoder in enumerate(model.text_encoders):
        components["text_encoder" if index == 0 else f"text_encoder_{index + 1}"] = encoder
    index = {}
    for component, root in components.items():
        for path, _ in root.named_modules():
            if path:
                index[module_name(component, path, model.is_sdxl)] = (component, path)
    return index


def group(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{kohya module: {tensor name: tensor}} (the module name holds no dots; the tensor name may)."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, _, name = key.partition(".")
        grouped.setdefault(module, {})[name] = tensor
    return grouped


def file_metadata(sdxl: bool, network: str) -> dict[str, str]:
    """The ``ss_*`` fields kohya writes and A1111's and ComfyUI's loaders read."""
    module = "networks.lora" if network == "lora" else "lycoris.kohya"
    metadata = {"ss_network_module": module, "ss_base_model_version": "sdxl_base_v1-0" if sdxl else "sd_v1"}
    if network != "lora":
        metadata["ss_network_args"] = f'{{"algo": "{network}"}}'
    return metadata
