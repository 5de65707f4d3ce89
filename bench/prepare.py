"""Data preparation's memory against the number of images: dreamloom's prepare (checks every
image, keeps only sizes, then decodes, resizes and writes one image at a time) beside a baseline
that holds every decoded image until all are written (how prepare worked before).

Each (variant, count) runs in a fresh subprocess, so its peak RSS is its own; variants alternate
per count. The JSON gives peak RSS in MiB per run and, per variant, the ratio of its peak at the
largest count to its peak at the smallest (flat memory: about 1).

    .venv/bin/python bench/prepare.py                        # 200 and 2,000 images of 768x768
    .venv/bin/python bench/prepare.py --counts 50 500 --side 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

RESOLUTION = 256


def write_images(folder: Path, count: int, side: int) -> Path:
    """``count`` distinct JPEG photos-like images (noise over gradients), written once and reused."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    for index in range(len(list(folder.glob("*.jpg"))), count):
        base = (ramp[None, :, None] * rng.random(3) + ramp[:, None, None] * rng.random(3)) / 2
        pixels = np.clip(base + rng.normal(0, 25, (side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)
    return folder


def measure(variant: str, source: Path, count: int) -> dict:
    """Prepare the first ``count`` images in a fresh process; its peak RSS and wall time."""
    code = f"""
import json, resource, shutil, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from dreamloom.data.images import open_rgb
from dreamloom.data.prepare import PrepareOptions, prepare_dataset
source = Path({str(source)!r})
work = Path(tempfile.mkdtemp())
subset = work / "subset"
subset.mkdir()
for path in sorted(source.glob("*.jpg"))[:{count}]:
    shutil.copy(path, subset / path.name)
started = time.perf_counter()
options = PrepareOptions(resolution={RESOLUTION})
held = []
if {variant!r} == "baseline":  # every image decoded and held before anything is written
    held = [open_rgb(path, options.max_image_pixels) for path in sorted(subset.glob("*.jpg"))]
prepare_dataset(subset, work / "out", options)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"peak_rss_mib": round(peak, 1), "seconds": round(seconds, 1), "held": len(held)}}))
shutil.rmtree(work)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--side", type=int, default=768, help="side of the square source images")
    parser.add_argument("--images", type=Path, help="where to keep the generated images (default: a temp folder)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    folder = args.images or Path(tempfile.gettempdir()) / f"dreamloom-bench-prepare-{args.side}"
    write_images(folder, max(args.counts), args.side)
    runs = []
    for count in sorted(args.counts):
        for variant in ("ours", "baseline"):
            result = measure(variant, folder, count)
            runs.append({"variant": variant, "images": count, **result})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    smallest, largest = min(args.counts), max(args.counts)
    peak = {(r["variant"], r["images"]): r["peak_rss_mib"] for r in runs}
    report = {
        "side": args.side,
        "resolution": RESOLUTION,
        "runs": runs,
        "peak_growth": {v: round(peak[(v, largest)] / peak[(v, smallest)], 2) for v in ("ours", "baseline")},
        "baseline_over_ours_at_largest": round(peak[("baseline", largest)] / peak[("ours", largest)], 2),
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
