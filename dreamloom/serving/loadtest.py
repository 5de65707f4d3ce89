"""Load against a serving endpoint: a chosen mix of requests (modes, adapters round-robin,
sampler, size, steps) kept ``concurrency`` in flight, measured as a client sees it.

Triton's own ``perf_analyzer`` is not installable here (the PyPI name is a placeholder and the
wheels ship no binary), and it cannot build dreamloom's requests (encoded images, adapter
references); this drives the real endpoint through ``ServingClient`` instead:

    dreamloom loadtest --url localhost:8000 --concurrency 8 --requests 64 \\
        --adapter-template "brand-{}@champion" --adapter-count 50
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from PIL import Image, ImageDraw

from dreamloom.errors import DreamloomError
from dreamloom.progress import StatusLine
from dreamloom.serving.protocol import ImageRequest, encode_image

LOAD_MODES = ("txt2img", "img2img", "inpaint")


@dataclass(frozen=True)
class LoadPlan:
    requests: int = 32
    concurrency: int = 4
    adapters: tuple[str, ...] = ("",)  # round-robin, one per request; "" is the base
    modes: tuple[str, ...] = ("txt2img",)  # round-robin too
    prompt: str = "a photo of a product on a plain background"
    steps: int = 20
    size: int = 0  # 0: the model's own
    sampler: str = ""
    guidance: float = 7.5
    warmup: int = 0  # requests sent first and not measured (each adapter's first load, say)

    def __post_init__(self):
        if not 1 <= self.concurrency <= 256:
            raise DreamloomError(f"concurrency {self.concurrency} is out of range: 1 to 256")
        if not 1 <= self.requests <= 100_000:
            raise DreamloomError(f"requests {self.requests} is out of range: 1 to 100000")
        unknown = [mode for mode in self.modes if mode not in LOAD_MODES]
        if unknown or not self.modes:
            raise DreamloomError(f"load modes are {', '.join(LOAD_MODES)} (got {', '.join(unknown) or 'none'})")
        if not self.adapters:
            raise DreamloomError("give at least one adapter, or '' for the base")

    def build(self) -> list[ImageRequest]:
        """Every request of the run, warm-up first; each is checked before any is sent."""
        side = self.size or 512
        scene = encode_image(_scene(side))
        mask = encode_image(_mask(side))
        images = {"txt2img": {}, "img2img": {"init_image": scene}, "inpaint": {"init_image": scene, "mask": mask}}
        cycle = zip(itertools.cycle(self.adapters), itertools.cycle(self.modes), strict=False)
        requests = []
        for seed, (adapter, mode) in zip(range(self.warmup + self.requests), cycle, strict=False):
            sized = {"width": self.size, "height": self.size} if self.size else {}
            request = ImageRequest(
                self.prompt, mode=mode, adapter=adapter, seed=seed, steps=self.steps, guidance=self.guidance,
                sampler=self.sampler, **sized, **images[mode],
            )  # fmt: skip
            request.check()
            requests.append(request)
        return requests


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    adapters: int
    seconds: float
    images_per_second: float
    latency_ms: dict[str, float]  # p50, p95, p99, mean, max of the requests that succeeded
    failures: int
    failures_by_status: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        latency = self.latency_ms
        text = (
            f"{self.requests} requests at concurrency {self.concurrency} over {self.adapters} adapter(s): "
            f"{self.images_per_second:.2f} images/s, latency p50 {latency.get('p50', 0):.0f} ms, "
            f"p95 {latency.get('p95', 0):.0f} ms, p99 {latency.get('p99', 0):.0f} ms; {self.failures} failed"
        )
        return text + (f" ({self.first_errors[0]})" if self.first_errors else "")


def run_load(client, plan: LoadPlan, progress: bool = False) -> LoadReport:
    """Send the plan's requests, ``concurrency`` in flight, and measure what came back."""
    from dreamloom.serving.client import ServingError

    requests = plan.build()
    warmup, measured = requests[: plan.warmup], requests[plan.warmup :]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    lock, status = threading.Lock(), StatusLine()
    done = 0

    def send(request: ImageRequest, record: bool) -> None:
        nonlocal done
        began = time.perf_counter()
        try:
            client.generate(request)
        except ServingError as exc:
            if record:
                with lock:
                    statuses[exc.status or "unreachable"] += 1
                    if len(errors) < 3:
                        errors.append(str(exc).splitlines()[0][:300])
            return
        finally:
            with lock:
                done += record
                if progress and record:
                    status.show(f"[dreamloom] loadtest {done}/{len(measured)}")
        if record:
            with lock:
                latencies.append(time.perf_counter() - began)

    with ThreadPoolExecutor(plan.concurrency) as pool:
        list(pool.map(lambda r: send(r, False), warmup))
        started = time.perf_counter()
        list(pool.map(lambda r: send(r, True), measured))
        seconds = time.perf_counter() - started
    status.close()
    return LoadReport(
        requests=len(measured),
        concurrency=plan.concurrency,
        adapters=len(set(plan.adapters) - {""}),
        seconds=round(seconds, 3),
        images_per_second=round(len(latencies) / seconds, 3),
        latency_ms=latency_summary(latencies),
        failures=sum(statuses.values()),
        failures_by_status=dict(statuses),
        first_errors=errors,
    )


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50, p95 and p99 (interpolated between ranks), mean and max, in milliseconds."""
    if not seconds:
        return {}
    milliseconds = sorted(1000 * s for s in seconds)
    if len(milliseconds) == 1:
        cuts = milliseconds * 99
    else:
        cuts = statistics.quantiles(milliseconds, n=100, method="inclusive")
    return {
        "p50": round(cuts[49], 1),
        "p95": round(cuts[94], 1),
        "p99": round(cuts[98], 1),
        "mean": round(statistics.fmean(milliseconds), 1),
        "max": round(milliseconds[-1], 1),
    }


def _scene(side: int) -> Image.Image:
    image = Image.new("RGB", (side, side), (200, 200, 190))
    ImageDraw.Draw(image).ellipse((side // 4, side // 4, 3 * side // 4, 3 * side // 4), fill=(180, 40, 40))
    return image


def _mask(side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).rectangle((side // 4, side // 4, 3 * side // 4, 3 * side // 4), fill=255)
    return mask
