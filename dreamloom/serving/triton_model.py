"""The Triton python-backend model: Triton's request objects in, the engine's images out.

Each model version folder of the repository holds a one-line ``model.py`` importing this class and
the ``serving.json`` routes it serves. A version renders through its newest adapter before Triton
marks it ready (``Engine.verify``). Refused requests get INVALID_ARGUMENT (HTTP 400) with a message
that names the problem and no server paths; server faults fail the batch with an error id. The model
stays loaded and ready either way.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
import uuid
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
                precision=parameters.get("precision", "auto"),
                channels_last=parameters.get("channels_last") == "true",
                compile=parameters.get("compile") == "true",
                max_batch=max(1, int(config.get("max_batch_size", 1))),
                max_request_cost=float(parameters["max_request_megapixel_steps"])
                if "max_request_megapixel_steps" in parameters
                else None,
            )
        )
        self.engine.warm_up()  # a compiled model compiles now, not while a request waits
        self.engine.verify()  # raising here fails this version's load: Triton keeps the previous one
        import triton_python_backend_utils as pb_utils

        self.labels = {"model": args["model_name"], "version": args["model_version"]}
        self.refusal_family = pb_utils.MetricFamily(
            name="dreamloom_requests_refused_total",
            description="Requests refused as invalid (HTTP 400 / INVALID_ARGUMENT), by reason",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.refusals: dict = {}

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
        except Exception:
            # A server fault: raising fails the batch, which Triton answers with 500 and counts in
            # nv_inference_request_failure. The caller gets an id; the log has the cause.
            error_id = uuid.uuid4().hex[:12]
            log.error("generation failed [%s]: %s", error_id, traceback.format_exc())
            raise pb_utils.TritonModelException(
                f"internal error {error_id}: the server could not generate this batch (its log has the cause)"
            ) from None
        responses = []
        for item in parsed:
            result = item if isinstance(item, RequestError) else next(images)
            if isinstance(result, RequestError):
                self._count_refusal(pb_utils, result.reason)
                error = pb_utils.TritonError(public_message(str(result)), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT, result[None])]))
        return responses

    def _count_refusal(self, pb_utils, reason: str) -> None:
        """Triton counts an error response as a success; refusals get their own counter on its
        metrics endpoint (dreamloom_requests_refused_total{model, version, reason})."""
        if reason not in self.refusals:
            labels = {**self.labels, "reason": reason}
            self.refusals[reason] = self.refusal_family.Metric(labels=labels)
        self.refusals[reason].increment(1)

    def finalize(self) -> None:
        self.engine = None


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+([\w.@+-]+)")


def public_message(message: str) -> str:
    """A refusal's message without the server's folders (a path keeps only its last part)."""
    return _ABSOLUTE_PATH.sub(r"\1", message)


def _as_numpy(pb_utils, request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
