"""The MLflow pyfunc of a registered version: prompts in, PNG images out.

It references its base model (from the artifact's manifest) rather than embedding it, as MLflow's
own diffusers flavor does, and is logged as code ("models from code") so that loading it runs
this module instead of unpickling an object.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

MODEL_CODE = Path(__file__).with_name("model_code.py")
ADAPTER = "adapter"

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "prompt"),
            ColSpec("string", "negative_prompt", required=False),
            ColSpec("long", "seed", required=False),
            ColSpec("long", "steps", required=False),
            ColSpec("double", "guidance", required=False),
            ColSpec("long", "width", required=False),
            ColSpec("long", "height", required=False),
            ColSpec("string", "control_image", required=False),  # base64 PNG, for ControlNet versions
        ]
    ),
    outputs=Schema([ColSpec("string", "image"), ColSpec("long", "seed")]),
)


def input_example(manifest) -> pd.DataFrame:
    """One request a caller of this version would send: its instance prompt at its resolution (and
    a blank condition for a ControlNet, which needs one)."""
    from PIL import Image

    row = {"prompt": manifest.instance_prompt, "seed": 0, "steps": 25, "guidance": 7.5}
    row["width"] = row["height"] = manifest.resolution
    if manifest.method_type.serving_mode == "controlnet":
        row["control_image"] = png_base64(Image.new("RGB", (manifest.resolution,) * 2))
    return pd.DataFrame([row])


def attach_input_example(registry, model_id: str, example: pd.DataFrame) -> None:
    """Save ``example`` with the logged model as ``log_model(input_example=...)`` does, without
    the validation that comes with it: that runs the model, which would fetch the base model (GBs)
    into the register step only to draw one picture. The evaluation is this version's check."""
    from mlflow.models import Model
    from mlflow.models.utils import _Example

    with tempfile.TemporaryDirectory() as folder:
        model = Model.load(f"models:/{model_id}")
        saved = _Example(example)
        saved.save(folder)
        model.saved_input_example_info = saved.info
        model.save(os.path.join(folder, "MLmodel"))
        registry.log_model_artifacts(model_id, folder)


def png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_from_base64(text: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


class DreamloomImageModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from dreamloom.inference import load_artifact_pipeline

        self.pipe, self.manifest = load_artifact_pipeline(Path(context.artifacts[ADAPTER]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from dreamloom.generation import GenerationRequest, generate

        images, seeds = [], []
        for row in model_input.to_dict(orient="records"):
            seed = int(_given(row, "seed", 0))
            control = _given(row, "control_image", None)
            request = GenerationRequest(
                [row["prompt"]],
                negative_prompt=_given(row, "negative_prompt", None),
                steps=int(_given(row, "steps", 25)),
                guidance=float(_given(row, "guidance", 7.5)),
                seed=seed,
                width=_int_or_none(_given(row, "width", None)),
                height=_int_or_none(_given(row, "height", None)),
                control_image=image_from_base64(control) if control else None,
            )
            images.append(png_base64(generate(self.pipe, request, self.manifest.resolution or None)[0][0]))
            seeds.append(seed)
        return pd.DataFrame({"image": images, "seed": seeds})


def _given(row: dict, key: str, default):
    value = row.get(key)
    return default if value is None or (isinstance(value, float) and value != value) else value


def _int_or_none(value):
    return None if value is None else int(value)
