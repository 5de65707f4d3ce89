"""Training-step speed and memory: dreamloom's loop against two references, in one process.

Two sections, both on the same base, data, batch and resolution.

``compare`` (lora, dreambooth): four variants of one training step:

- ``ours``: ``dreamloom.training.trainer.Trainer.train_step`` as a run uses it by default
  (cached latents and text embeddings, fused AdamW, eager);
- ``ours_compiled``: the same with ``training.compile: true`` (``torch.compile`` on the UNet);
- ``baseline``: the structure of diffusers' ``train_dreambooth_lora.py`` / ``train_dreambooth.py``
  step: images transformed and captions tokenized by the dataset each step, the VAE and the text
  encoder run every step, then UNet forward/backward, clipping, AdamW, scheduler;
- ``floor``: the compute floor: UNet forward + backward only, on fixed latents, embeddings,
  noise and timesteps, eager, no optimizer.

The machine's speed drifts by tens of percent over seconds, so the variants are timed
interleaved, one step each per round (in shuffled order), and the report gives the median of the
per-round ratios.

``methods`` (all seven): each method's step time (all methods interleaved the same way), peak
memory, the size of the artifact it writes on this base, and the artifact size and training
memory computed for SD 1.5 and SDXL from their real architectures (``dreamloom.sizing``).

Peak memory is measured in a fresh subprocess per variant (peak RSS on CPU, peak allocated on
CUDA). ``--isolated`` (the default on a real architecture, where one process cannot hold a model
per method) runs each method and precision alone in a subprocess that reports both its step time
and its peak memory; those step times are medians of separate runs, not paired rounds.
``--precisions no bf16`` adds a column per precision.

``script`` (``--diffusers CHECKOUT``): ``dreamloom train`` end to end (the CLI, this machine's
Ray, MLflow, the artifact; no final grid) against diffusers' own
``examples/dreambooth/train_dreambooth_lora.py`` from that checkout, run as a subprocess
(``bench/diffusers_script.py``) on the same base folder, images, resolution, batch, rank and
precision. Both run a short and a long step count, alternating; the slope is the time per step,
the intercept the fixed cost of a run. Ray's own start (a one-step TorchTrainer that does nothing)
is timed beside them.

Prints JSON and a markdown table; ``--out`` also writes the JSON to a file.

    .venv/bin/python bench/train.py                                  # everything, on tiny
    .venv/bin/python bench/train.py --compare lora --no-methods --rounds 30 --no-memory
    .venv/bin/python bench/train.py --base-model sd15-random --resolution 256 --batch-size 1 \
        --compare --precisions no bf16 --rounds 3 --warmup 1 --diffusers ~/src/diffusers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from report import bench_process  # bench/report.py: these scripts run with bench/ on sys.path

VARIANTS = ("ours", "ours_compiled", "baseline", "floor")
ALL_METHODS = (
    "lora",
    "loha",
    "lokr",
    "dreambooth",
    "dreambooth-lora",
    "textual-inversion",
    "pivotal",
    "hypernetwork",
    "controlnet",
)
SCRIPT = "examples/dreambooth/train_dreambooth_lora.py"
PROMPT = "a photo of sks ball"


def main() -> None:
    args = _parse()
    bench_process(args.threads)
    side = max(96, args.resolution)
    data = _draw_data(Path(os.environ["DREAMLOOM_HOME"]) / f"bench-data-{side}", side=side)
    if args.probe:
        variant = args.probe[0]
        print(json.dumps(_ray_start() if variant == "ray-start" else _probe(args, data, *args.probe)))
        return
    report = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": args.threads,
            "device": args.device,
        },
        "setup": {
            "base_model": args.base_model,
            "resolution": args.resolution,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "precisions": args.precisions,
            "gradient_checkpointing": args.gradient_checkpointing,
        },
        "compare": {method: _measure(args, data, method) for method in args.compare},
    }
    if args.methods:
        report["methods"] = _methods_table(args, data)
    if args.diffusers:
        report["script"] = _versus_script(args, data)
    text = json.dumps(report, indent=2)
    print(text)
    if args.methods:
        print(_markdown(report["methods"], args.precisions))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", nargs="*", default=["lora", "dreambooth"], choices=["lora", "dreambooth"])
    parser.add_argument("--no-methods", dest="methods", action="store_false", help="skip the all-methods table")
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60, help="interleaved timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    parser.add_argument("--only", nargs="+", choices=ALL_METHODS, help="methods of the methods table")
    parser.add_argument(
        "--precisions", nargs="+", default=None, choices=["no", "bf16", "fp16", "auto"], help="mixed_precision values"
    )
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--isolated", action="store_true", default=None, help="one subprocess per method")
    parser.add_argument("--diffusers", type=Path, help="a checkout of huggingface/diffusers: adds the script section")
    parser.add_argument("--script-steps", nargs=2, type=int, default=[4, 12], metavar=("SHORT", "LONG"))
    parser.add_argument("--script-rounds", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--probe", nargs=3, metavar=("VARIANT", "METHOD", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.precisions = args.precisions or ["bf16" if args.device == "cuda" else "no"]
    if args.isolated is None:
        args.isolated = args.base_model.endswith("-random")  # a real architecture: one model per process
    return args


# ----- the three variants -----


def _job(args, data: Path, method: str, workdir: Path, compile_unet: bool = False, precision: str | None = None):
    from dreamloom.config import load_run_config
    from dreamloom.training.preflight import plan_job

    config = load_run_config(
        None,
        {
            "method": method,
            "base_model": args.base_model,
            "data.path": str(data),
            "data.instance_prompt": "a photo of <concept>",  # <concept>: the embedding methods' token
            "data.resolution": args.resolution,
            "output": str(workdir / method),
            "prior.enabled": False,
            "training.batch_size": args.batch_size,
            "training.steps": 100_000,
            "training.compile": compile_unet,
            "training.gradient_checkpointing": args.gradient_checkpointing,
            "training.mixed_precision": precision or args.precisions[0],
        },
    )
    return plan_job(config)


class Ours:
    compiled = False

    def __init__(self, args, data, method, workdir, precision: str | None = None):
        from dreamloom.training.trainer import Trainer

        self.trainer = Trainer(_job(args, data, method, workdir, self.compiled, precision), device=args.device)
        self.count = 0

    def step(self) -> None:
        self.count += 1
        self.trainer.train_step(self.count)


class OursCompiled(Ours):
    compiled = True


class ExampleStyleBaseline:
    """One step the way diffusers' DreamBooth(-LoRA) examples do it (no accelerate wrapper)."""

    def __init__(self, args, data, method, workdir, precision: str | None = None):
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig

        from dreamloom.data.prepare import PreparedDataset
        from dreamloom.models.base import load_base_model

        job = _job(args, data, method, workdir, precision=precision)
        self.model = load_base_model(job.base_model, args.device)
        self.device = torch.device(args.device)
        unet = self.model.unet
        if method == "lora":
            unet.add_adapter(
                LoraConfig(
                    r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]
                )
            )
        else:
            unet.requires_grad_(True)
        unet.train()
        self.params = [p for p in unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.lr_scheduler = get_scheduler("constant", optimizer=self.optimizer)
        dataset = PreparedDataset.load(Path(job.dataset_root))
        self.images = [Image.open(dataset.root / item.image).convert("RGB") for item in dataset.items]
        self.resolution, self.batch_size = args.resolution, args.batch_size
        self.prompt = PROMPT
        self.index = 0

    def _example(self):
        # DreamBoothDataset.__getitem__: resize, center crop, to tensor, normalize; tokenize the prompt.
        image = self.images[self.index % len(self.images)]
        self.index += 1
        image = image.resize((self.resolution, self.resolution), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        tokenizer = self.model.tokenizers[0]
        ids = tokenizer(
            self.prompt,
            truncation=True,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        return (pixels - 0.5) / 0.5, ids

    def step(self) -> None:
        examples = [self._example() for _ in range(self.batch_size)]
        pixel_values = torch.stack([e[0] for e in examples]).to(self.device)
        input_ids = torch.cat([e[1] for e in examples]).to(self.device)
        vae, unet, scheduler = self.model.vae, self.model.unet, self.model.noise_scheduler
        model_input = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(model_input)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (model_input.shape[0],), device=self.device
        ).long()
        noisy_model_input = scheduler.add_noise(model_input, noise, timesteps)
        encoder_hidden_states = self.model.text_encoders[0](input_ids)[0]
        model_pred = unet(noisy_model_input, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        loss.item()  # the example logs the loss every step


class ComputeFloor:
    """UNet forward + backward on fixed inputs: what any loop must at least spend."""

    def __init__(self, args, data, method, workdir, precision: str | None = None):
        baseline = ExampleStyleBaseline(args, data, method, workdir, precision)  # same trainable setup
        self.unet, self.params = baseline.model.unet, baseline.params
        generator = torch.Generator().manual_seed(0)
        side = args.resolution // baseline.model.vae_scale_factor
        device = torch.device(args.device)
        shape = (args.batch_size, baseline.model.unet.config.in_channels, side, side)
        self.latents = torch.randn(shape, generator=generator).to(device)
        self.noise = torch.randn(shape, generator=generator).to(device)
        self.timesteps = torch.randint(0, 1000, (args.batch_size,), generator=generator).to(device)
        with torch.no_grad():
            self.embeddings = baseline.model.encode_text([baseline.prompt] * args.batch_size)

    def step(self) -> None:
        pred = self.unet(self.latents, self.timesteps, encoder_hidden_states=self.embeddings.embeds).sample
        F.mse_loss(pred.float(), self.noise.float()).backward()
        for parameter in self.params:
            parameter.grad = None


BUILDERS = {"ours": Ours, "ours_compiled": OursCompiled, "baseline": ExampleStyleBaseline, "floor": ComputeFloor}


# ----- measuring -----


def _measure(args, data: Path, method: str) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        variants = {name: BUILDERS[name](args, data, method, Path(workdir)) for name in VARIANTS}
        for variant in variants.values():
            for _ in range(args.warmup):
                variant.step()
        seconds = {name: [] for name in VARIANTS}
        order = list(VARIANTS)
        for _ in range(args.rounds):
            random.shuffle(order)
            for name in order:
                _sync(args.device)
                started = time.perf_counter()
                variants[name].step()
                _sync(args.device)
                seconds[name].append(time.perf_counter() - started)
    result = {f"{name}_step_ms": round(statistics.median(times) * 1000, 2) for name, times in seconds.items()}
    for ours in ("ours", "ours_compiled"):
        result[f"{ours}_vs_baseline"] = _paired_ratio(seconds[ours], seconds["baseline"])
        result[f"{ours}_vs_floor"] = _paired_ratio(seconds[ours], seconds["floor"])
    result["baseline_vs_floor"] = _paired_ratio(seconds["baseline"], seconds["floor"])
    if not args.no_memory:
        result["peak_memory_mib"] = {name: _memory_in_subprocess(args, name, method) for name in VARIANTS}
    return result


def _paired_ratio(ours: list[float], reference: list[float]) -> dict:
    ratios = sorted(a / b for a, b in zip(ours, reference, strict=True))
    quartile = len(ratios) // 4
    return {
        "median": round(statistics.median(ratios), 3),
        "iqr": [round(ratios[quartile], 3), round(ratios[-quartile - 1], 3)],
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _memory_in_subprocess(args, variant: str, method: str, precision: str | None = None) -> dict:
    """Peak memory (and the step time) of one variant of one method, alone in a fresh process."""
    command = [sys.executable, __file__, "--probe", variant, method, precision or args.precisions[0]]
    command += ["--threads", str(args.threads), "--base-model", args.base_model, "--device", args.device]
    command += ["--resolution", str(args.resolution), "--batch-size", str(args.batch_size)]
    command += ["--rounds", str(args.rounds), "--warmup", str(args.warmup)]
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _probe(args, data: Path, variant: str, method: str, precision: str) -> dict:
    from dreamloom.training.precision import peak_rss_bytes

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = peak_rss_bytes()
    seconds = []
    with tempfile.TemporaryDirectory() as workdir:
        runner = BUILDERS[variant](args, data, method, Path(workdir), precision)
        for _ in range(args.warmup):
            runner.step()
        for _ in range(args.rounds):
            _sync(args.device)
            started = time.perf_counter()
            runner.step()
            _sync(args.device)
            seconds.append(time.perf_counter() - started)
    peak = peak_rss_bytes()
    result = {
        "step_ms": round(statistics.median(seconds) * 1000, 2),
        "peak_rss": round(peak / 2**20, 1),
        "growth_over_imports": round((peak - before) / 2**20, 1),
    }
    if args.device.startswith("cuda"):
        result["peak_cuda_allocated"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _draw_data(folder: Path, count: int = 8, side: int = 96) -> Path:
    if len(list(folder.glob("*.png"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for index in range(count):
        image = Image.new("RGB", (side, side), tuple(rng.randint(100, 255) for _ in range(3)))
        ImageDraw.Draw(image).ellipse((side // 5, side // 5, side * 3 // 4, side * 3 // 4), fill=(200, 30, 30))
        image.save(folder / f"{index}.png")
    return folder


# ----- every method -----


def _methods_table(args, data: Path) -> dict:
    methods = tuple(args.only or ALL_METHODS)
    if args.isolated:
        steps = {(m, p): _memory_in_subprocess(args, "ours", m, p) for m in methods for p in args.precisions}
        seconds = {key: [probe["step_ms"] / 1000] for key, probe in steps.items()}
        with tempfile.TemporaryDirectory() as workdir:  # artifact sizes come from the first precision
            artifact_bytes, configs = {}, {}
            for method in methods:
                runner = Ours(args, data, method, Path(workdir), args.precisions[0])
                artifact_bytes[method] = _artifact_bytes(runner, Path(workdir) / f"artifact-{method}")
                configs[method] = runner.trainer.config
                del runner
        memory = {key: probe for key, probe in steps.items()}
    else:
        seconds, artifact_bytes, configs = _interleaved(args, data, methods)
        memory = {}
        if not args.no_memory:
            memory = {(m, p): _memory_in_subprocess(args, "ours", m, p) for m in methods for p in args.precisions}
    return _rows(methods, args.precisions, seconds, memory, artifact_bytes, configs)


def _interleaved(args, data: Path, methods: tuple[str, ...]):
    keys = [(m, p) for m in methods for p in args.precisions]
    with tempfile.TemporaryDirectory() as workdir:
        runners = {(m, p): Ours(args, data, m, Path(workdir) / p, p) for m, p in keys}
        for runner in runners.values():
            for _ in range(args.warmup):
                runner.step()
        seconds = {key: [] for key in keys}
        order = list(keys)
        for _ in range(args.rounds):
            random.shuffle(order)
            for key in order:
                _sync(args.device)
                started = time.perf_counter()
                runners[key].step()
                _sync(args.device)
                seconds[key].append(time.perf_counter() - started)
        first = args.precisions[0]
        artifact_bytes = {m: _artifact_bytes(runners[(m, first)], Path(workdir) / f"artifact-{m}") for m in methods}
        configs = {m: runners[(m, first)].trainer.config for m in methods}
    return seconds, artifact_bytes, configs


def _rows(methods, precisions, seconds, memory, artifact_bytes, configs) -> dict:
    from dreamloom.sizing import Architecture, estimate

    bases = {name: Architecture.for_base(name) for name in ("sd15", "sdxl")}
    table = {}
    for method in methods:
        row = {"artifact_bytes": artifact_bytes[method]}
        for precision in precisions:
            row[f"step_ms_{precision}"] = round(statistics.median(seconds[(method, precision)]) * 1000, 2)
            if (method, precision) in memory:
                row[f"peak_memory_mib_{precision}"] = memory[(method, precision)]
        if "no" in precisions and "bf16" in precisions:
            row["bf16_vs_fp32"] = round(row["step_ms_bf16"] / row["step_ms_no"], 3)
        for name, arch in bases.items():
            computed = estimate(arch, configs[method])
            row[f"{name}_artifact_bytes"] = computed.artifact_bytes
            row[f"{name}_training_state_bytes"] = computed.training_state_bytes
        table[method] = row
    return table


def _artifact_bytes(runner: Ours, folder: Path) -> int:
    runner.trainer.save_artifact(folder)
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _markdown(table: dict, precisions: list[str]) -> str:
    from dreamloom.sizing import human_bytes

    names = {"no": "fp32", "bf16": "bf16", "fp16": "fp16", "auto": "auto"}
    step_columns = " | ".join(f"step {names[p]} (ms) | peak RSS {names[p]} (MiB)" for p in precisions)
    lines = [
        f"| method | {step_columns} | artifact (this base) | artifact SD 1.5 | artifact SDXL "
        "| train state SD 1.5 | train state SDXL |",
        "| --- " * (6 + 2 * len(precisions)) + "|",
    ]
    for method, row in table.items():
        steps = " | ".join(
            f"{row[f'step_ms_{p}']} | {row.get(f'peak_memory_mib_{p}', {}).get('peak_rss', '-')}" for p in precisions
        )
        lines.append(
            f"| {method} | {steps} | {human_bytes(row['artifact_bytes'])} | "
            f"{human_bytes(row['sd15_artifact_bytes'])} | {human_bytes(row['sdxl_artifact_bytes'])} | "
            f"{human_bytes(row['sd15_training_state_bytes'])} | {human_bytes(row['sdxl_training_state_bytes'])} |"
        )
    return "\n".join(lines)


# ----- end to end against diffusers' script -----


def _versus_script(args, data: Path) -> dict:
    from dreamloom.models import resolve_base_model

    base = resolve_base_model(args.base_model)
    precision = {"no": "no", "bf16": "bf16", "fp16": "fp16", "auto": "bf16"}[args.precisions[0]]
    short, long = args.script_steps
    tools = {"dreamloom": _dreamloom_command, "diffusers": _script_command}
    seconds = {tool: {short: [], long: []} for tool in tools}
    phases: list[dict] = []  # where each short dreamloom run's seconds went
    with tempfile.TemporaryDirectory(prefix="dreamloom-bench-script-") as workdir:
        for round_ in range(args.script_rounds):
            for steps in (short, long):
                for tool in sorted(tools, key=lambda _: random.random()):
                    output = Path(workdir) / f"{tool}-{round_}-{steps}"
                    command = tools[tool](args, base.location, data, output, steps, precision)
                    wall, stdout = _timed_run(command, tool, steps)
                    seconds[tool][steps].append(wall)
                    if tool == "dreamloom" and steps == short:
                        phases.append(_run_phases(stdout, wall))
        ray_start, _ = _timed_run([sys.executable, __file__, "--probe", "ray-start", "-", "-"], "ray start", 1)
    result = {"precision": precision, "steps": [short, long], "ray_start_seconds": round(ray_start, 2)}
    for tool, times in seconds.items():
        t_short, t_long = statistics.median(times[short]), statistics.median(times[long])
        per_step = (t_long - t_short) / (long - short)
        result[tool] = {
            "seconds": {str(n): [round(t, 2) for t in ts] for n, ts in times.items()},
            "step_seconds": round(per_step, 3),
            "fixed_seconds": round(t_short - short * per_step, 2),
        }
    result["step_ratio"] = round(result["dreamloom"]["step_seconds"] / result["diffusers"]["step_seconds"], 3)
    result["fixed_over_script_plus_ray"] = round(
        result["dreamloom"]["fixed_seconds"] - result["diffusers"]["fixed_seconds"] - ray_start, 2
    )
    result["dreamloom"]["phase_seconds"] = {
        name: round(statistics.median(run[name] for run in phases), 2) for name in phases[0]
    }
    result["diffusers_commit"] = _commit(args.diffusers)
    return result


def _run_phases(stdout: str, wall: float) -> dict:
    """The seconds/<phase> metrics the run logged to MLflow, and what its process spent outside
    them (interpreter start, imports, shutting Ray down)."""
    from dreamloom.settings import tracking_uri
    from dreamloom.tracking import client

    run_id = re.search(r"^MLflow run:\s+(\w+)", stdout, re.MULTILINE).group(1)
    metrics = client(tracking_uri()).get_run(run_id).data.metrics
    phases = {key.removeprefix("seconds/"): value for key, value in metrics.items() if key.startswith("seconds/")}
    phases["process_start_and_exit"] = wall - phases.pop("total")
    return phases


def _dreamloom_command(args, base: str, data: Path, output: Path, steps: int, precision: str) -> list[str]:
    settings = {
        "validation.final_grid": "false",
        "training.mixed_precision": precision,
        "training.checkpoint_every": "0",
        "training.gradient_checkpointing": str(args.gradient_checkpointing).lower(),
        "lora.rank": "4",
    }
    command = [sys.executable, "-m", "dreamloom.cli", "train", "--method", "lora", "--base-model", base]
    command += ["--data", str(data), "--instance-prompt", PROMPT, "--resolution", str(args.resolution)]
    command += ["--steps", str(steps), "--batch-size", str(args.batch_size), "--output", str(output)]
    # Runs keep their state under the work folder by name: an earlier bench's names would be refused.
    command += ["--run-name", f"bench-{output.name}-{uuid.uuid4().hex[:8]}"]
    return command + [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def _script_command(args, base: str, data: Path, output: Path, steps: int, precision: str) -> list[str]:
    runner = Path(__file__).with_name("diffusers_script.py")
    command = [sys.executable, str(runner), str(args.diffusers), SCRIPT, "--"]
    command += ["--pretrained_model_name_or_path", base, "--instance_data_dir", str(data)]
    command += ["--instance_prompt", PROMPT, "--output_dir", str(output), "--resolution", str(args.resolution)]
    command += ["--train_batch_size", str(args.batch_size), "--max_train_steps", str(steps), "--rank", "4"]
    command += ["--learning_rate", "1e-4", "--mixed_precision", precision, "--seed", "0"]
    command += ["--checkpointing_steps", "1000000", "--report_to", "tensorboard"]
    if args.gradient_checkpointing:
        command.append("--gradient_checkpointing")
    return command


def _timed_run(command: list[str], label: str, steps: int) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{label} ({steps} steps) failed:\n{done.stderr[-3000:]}")
    print(f"[bench] {label}: {steps} steps in {seconds:.1f} s", file=sys.stderr, flush=True)
    return seconds, done.stdout


def _ray_start() -> dict:
    """Ray's own start and stop around a TorchTrainer whose one worker does nothing."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory() as storage:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING")
        TorchTrainer(
            lambda _: None,
            scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(storage_path=storage),
        ).fit()
        ray.shutdown()
    return {}


def _commit(checkout: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


if __name__ == "__main__":
    main()
