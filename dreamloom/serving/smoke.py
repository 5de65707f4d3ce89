"""Is a deployment answering? MLflow reachable, the Triton model ready, one image rendered: what
``dreamloom check`` prints and the chart's ``helm test`` hook runs."""

from __future__ import annotations

import time

from dreamloom.errors import Refused, ServiceUnreachable


def check_deployment(triton_url: str, model: str = "dreamloom", tracking_uri: str | None = None):
    """Yields one line per check as it passes; at the first that fails raises an error whose exit
    code says which: 4 MLflow or Triton not answering, 1 the model not ready or a blank image."""
    from dreamloom.serving.client import ServingClient, ServingError
    from dreamloom.serving.protocol import check_picture, probe_request
    from dreamloom.settings import redacted
    from dreamloom.settings import tracking_uri as default_tracking_uri
    from dreamloom.tracking import client

    mlflow = client(tracking_uri or default_tracking_uri())
    try:
        mlflow.search_experiments(max_results=1)
    except Exception as exc:  # MlflowException, or the HTTP error under it
        raise ServiceUnreachable(
            "MLflow", redacted(mlflow.tracking_uri), str(exc).splitlines()[0][:200], "check MLFLOW_TRACKING_URI"
        ) from None
    yield f"MLflow at {redacted(mlflow.tracking_uri)} answers"
    with ServingClient(triton_url, model=model) as serving:
        if not serving.ready():
            try:
                serving.generate(probe_request())  # tells "nothing answers" (exit 4) from "not ready"
            except ServingError as failure:
                if failure.unreachable:
                    raise
            raise Refused(f"Triton at {triton_url} answers but model {model!r} is not ready; see Triton's log")
        yield f"Triton at {triton_url} serves {model!r}"
        started = time.monotonic()
        image = serving.generate(probe_request())
        try:
            check_picture(image, f"{model!r} on Triton")
        except Exception as blank:
            raise Refused(str(blank)) from None
        yield f"one image rendered: {image.shape[1]}x{image.shape[0]} in {time.monotonic() - started:.1f} s"
