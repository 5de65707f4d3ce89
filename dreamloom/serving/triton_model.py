"""The Triton python-backend model: Triton's request objects in, the engine's images out.

Each model version folder of the repository holds a one-line ``model.py`` importing this class and
the ``serving.json`` routes it serves. Refused requests get an error response that names the
problem; the model stays loaded and ready.
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

from dreamloom.serving.protocol import OUTPUT, ImageRequest, RequestError, from_arrays

log = logging.getLogger("dreamloom.serving")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from dreamloom.logs import quiet_library_logging
        from dreamloom.serving.engine import Engine, EngineConfig
        from dreamloom.serving.routes import Routes

        quiet_library_logging()
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        routes = Routes.load(Path(args["model_repository"]) / args["model_version"])
        self.engine = Engine(
            EngineConfig(
                base_model=routes.base_model,
                routes=routes,
                dreambooth=routes.dreambooth,
                adapter_budget_mib=int(parameters.get("adapter_budget_mib", 512)),
                max_batch=max(1, int(config.get("max_batch_size", 1))),
            )
        )

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        parsed: list[ImageRequest | RequestError] = []
        for request in requests:
            try:
                parsed.append(from_arrays(lambda name, r=request: _as_numpy(pb_utils, r, name)))
            except RequestError as exc:
                parsed.append(exc)
        valid = [p for p in parsed if isinstance(p, ImageRequest)]
        try:
            images = iter(self.engine.run(valid))
        except Exception as exc:  # a bug must not take the model down: answer every request with it
            log.error("generation failed: %s", traceback.format_exc())
            images = iter([RequestError(f"internal error: {type(exc).__name__}: {exc}")] * len(valid))
        responses = []
        for item in parsed:
            result = item if isinstance(item, RequestError) else next(images)
            if isinstance(result, Exception):
                error = pb_utils.TritonError(str(result))
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT, result[None])]))
        return responses

    def finalize(self) -> None:
        self.engine = None


def _as_numpy(pb_utils, request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
