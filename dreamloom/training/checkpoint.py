"""Training checkpoints as safetensors plus JSON: resumable state with no pickle anywhere.

A checkpoint folder holds the method's trainable tensors, the optimizer's tensors and the rest
of the state (step, learning-rate schedule, optimizer hyper-parameters) as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


@dataclass
class TrainingState:
    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]


def save_training_state(folder: Path, state: TrainingState) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_detached(state.trainable), str(folder / TRAINABLE_FILE))
    optimizer_tensors, optimizer_rest = _split_optimizer_state(state.optimizer)
    save_file(optimizer_tensors, str(folder / OPTIMIZER_FILE))
    document = {
        "step": state.step,
        "optimizer": optimizer_rest,
        "lr_scheduler": state.lr_scheduler,
    }
    (folder / STATE_FILE).write_text(json.dumps(document, indent=1))


def load_training_state(folder: Path, device: torch.device | str = "cpu") -> TrainingState:
    document = json.loads((folder / STATE_FILE).read_text())
    trainable = load_file(str(folder / TRAINABLE_FILE), device=str(device))
    optimizer_tensors = load_file(str(folder / OPTIMIZER_FILE), device=str(device))
    optimizer = _join_optimizer_state(optimizer_tensors, document["optimizer"])
    return TrainingState(document["step"], trainable, optimizer, document["lr_scheduler"])


def _detached(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}


def _split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, slots in state_dict["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{slot}"] = value
            else:
                scalars.setdefault(str(param_id), {})[slot] = value
    return _detached(tensors), {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        param_id, slot = key.split(".", 1)
        state.setdefault(int(param_id), {})[slot] = tensor
    for param_id, slots in rest["scalars"].items():
        state.setdefault(int(param_id), {}).update(slots)
    return {"state": state, "param_groups": rest["param_groups"]}
