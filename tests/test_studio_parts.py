"""The studio's pieces without a browser: upload checks, the Teach form's validation, jobs (real
CLI child processes: progress read back, failures named, cancel), exposure and users, painted
masks and conditions, recipes."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from dreamloom.errors import ConfigError, DreamloomError
from dreamloom.serving.protocol import ImageRequest
from dreamloom.serving.server import free_port
from dreamloom.studio import generate, teach
from dreamloom.studio.app import Studio, StudioSettings, check_exposure, launch, read_users
from dreamloom.studio.jobs import Job, JobView, Stage, read_line
from dreamloom.toy.concepts import INSTANCE_PROMPT, write_concept


def _uploads(tmp_path: Path) -> dict[str, Path]:
    pictures = sorted(write_concept("hexagon", tmp_path / "good").glob("*.png"))
    odd = tmp_path / "odd"
    odd.mkdir()
    files = {path.name: path for path in pictures}
    Image.new("CMYK", (80, 80), (0, 200, 200, 0)).save(odd / "cmyk.jpg")
    (odd / "truncated.png").write_bytes(pictures[0].read_bytes()[:150])
    (odd / "notes.png").write_text("not a picture")
    bomb = Image.new("1", (12_000, 12_000))  # 144 MP of one bit: a few KB on disk
    bomb.save(odd / "bomb.png")
    (odd / ".hidden.png").write_bytes(pictures[0].read_bytes())
    files.update({path.name: path for path in odd.iterdir()})
    return files


def test_uploads_are_checked_as_prepare_checks_them_and_only_accepted_ones_train(tmp_path):
    files = _uploads(tmp_path)
    folder = tmp_path / "data"
    verdicts = {v.name: v for v in teach.check_uploads(list(files.values()), folder, resolution=64)}
    accepted = sorted(name for name, verdict in verdicts.items() if verdict.accepted)
    assert accepted == sorted([*(name for name in files if name.startswith("hexagon")), "cmyk.jpg"])
    assert "truncated" in verdicts["truncated.png"].message
    assert verdicts["notes.png"].message.startswith("not a PNG, JPEG")
    assert "decompression bomb" in verdicts["bomb.png"].message
    assert "hidden" in verdicts[".hidden.png"].message
    assert sorted(path.name for path in folder.iterdir()) == accepted  # what trains is what was accepted
    assert all(
        verdict.thumbnail is not None and max(verdict.thumbnail.size) <= teach.THUMBNAIL
        for verdict in verdicts.values()
    )
    summary = teach.verdicts_markdown(list(verdicts.values()))
    assert f"{len(accepted)} of {len(files)} files accepted" in summary
    assert "refused **truncated.png**" in summary


def test_a_drop_with_nothing_usable_leaves_no_training_folder(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    folder = tmp_path / "data"
    [verdict] = teach.check_uploads([broken], folder, resolution=64)
    assert not verdict.accepted and not folder.exists()


def _form(tmp_path: Path, **changes) -> teach.TeachForm:
    data = write_concept("hexagon", tmp_path / "data")
    fields = dict(
        name="hexagon", method="lora", base_model="toy", data=data, instance_prompt=INSTANCE_PROMPT,
        resolution=64, steps=20, batch_size=2, learning_rate=1e-3,
    )  # fmt: skip
    return teach.TeachForm(**{**fields, **changes})


def test_the_teach_form_becomes_a_validated_run_config(tmp_path):
    config = teach.run_config(_form(tmp_path, extra="lora.rank=4\n# a note\nvalidation.steps=3"), tmp_path / "out")
    assert (config.method, config.lora.rank, config.validation.steps, config.training.steps) == ("lora", 4, 3, 20)
    assert config.output == tmp_path / "out"


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"name": "bad name!"}, "name"),
        ({"steps": 0}, "steps"),
        ({"learning_rate": 5.0}, "learning_rate"),
        ({"extra": "lora.ranks=4"}, "ranks"),
        ({"extra": "no equals sign"}, "key=value"),
        ({"method": "magic"}, "magic"),
        ({"extra": "data.path=/etc"}, "studio chooses"),
        ({"extra": "output=/root/.ssh"}, "studio chooses"),
        ({"extra": "prior.class_data=/var/lib"}, "studio chooses"),
        ({"extra": "scaling.storage_path=/tmp/elsewhere"}, "studio chooses"),
    ],
)
def test_a_bad_teach_form_is_refused_before_anything_starts(tmp_path, changes, named):
    runs = tmp_path / "runs"
    with pytest.raises(DreamloomError, match=named):
        teach.teaching_job(_form(tmp_path, **changes), runs)
    assert not runs.exists() or not any(runs.iterdir())  # no run folder, no job


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"eval_images_per_prompt": 1}, "at least 2 images per prompt"),
        ({"launcher": "ray"}, "Ray address"),
        ({"launcher": "kfp"}, "KFP host"),
        ({"launcher": "slurm"}, "unknown launcher"),
    ],
)
def test_launcher_and_evaluation_settings_are_checked_before_training(tmp_path, changes, named):
    runs = tmp_path / "runs"
    with pytest.raises((DreamloomError, ConfigError), match=named):
        teach.teaching_job(_form(tmp_path, **changes), runs)
    assert not runs.exists() or not any(runs.iterdir())  # no run folder left behind


def test_each_launcher_gets_its_commands(tmp_path):
    local = teach.teaching_job(_form(tmp_path, eval_steps=4, eval_images_per_prompt=2), tmp_path / "runs")
    train, register = local.stages
    assert train.command[:2] == ["train", "--config"] and train.command[-2:] == ["--launcher", "local"]
    assert register.command[:2] == ["registry", "register"] and "--images-per-prompt" in register.command
    ray = teach.teaching_job(_form(tmp_path, launcher="ray", ray_address="http://head:8265"), tmp_path / "runs")
    assert ray.env["RAY_ADDRESS"] == "http://head:8265"
    kfp = teach.teaching_job(_form(tmp_path, launcher="kfp-local", eval_images_per_prompt=2), tmp_path / "runs")
    [pipeline] = kfp.stages
    assert pipeline.command[:2] == ["pipeline", "run"] and "--local" in pipeline.command
    assert "--eval-images-per-prompt" in pipeline.command
    run_file = Path(pipeline.command[2])
    assert "output" not in yaml.safe_load(run_file.read_text())  # the pipeline chooses where steps write


def test_job_lines_are_read_back_as_progress_loss_eta_run_and_error():
    view = JobView("x", "running", "training")
    read_line(view, "(RayTrainWorker pid=1) [train] ████░░░░░░ 12/40 (30%) loss 0.2175 lr 0.001 | 5.69 it/s, ETA 5s")
    read_line(view, "[evaluate] ████████░░ 2/5 (40%) dino -0.2474 | 3.33 it/s, ETA 1s")
    read_line(view, "[dreamloom] run hexagon: lora on toy, 5 images, MLflow run 0123456789abcdef0123456789abcdef")
    read_line(view, "dreamloom: error: evaluation needs at least 2 images per prompt")
    assert view.losses == [(12, 0.2175)]  # only training's loss goes on the curve
    assert (view.done, view.total, view.eta_s) == (2, 5, 1.0)
    assert view.run_id == "0123456789abcdef0123456789abcdef"
    assert view.error == "evaluation needs at least 2 images per prompt"


def test_a_job_runs_its_stages_in_order_and_stops_at_the_first_failure(tmp_path):
    data = write_concept("hexagon", tmp_path / "data")
    good = Stage(
        "preparing", ["prepare", "--data", str(data), "--out", str(tmp_path / "prepared"), "--resolution", "64"]
    )
    bad = Stage("preparing again", ["prepare", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "p2")])
    never = Stage("never", ["prepare", "--data", str(data), "--out", str(tmp_path / "p3")])
    view = Job("prep", [good, bad, never], tmp_path / "job").start().wait(120)
    assert view.status == "failed" and view.stage == "preparing again"
    assert "missing" in view.error
    assert (tmp_path / "prepared").is_dir() and not (tmp_path / "p3").exists()
    assert "$ dreamloom prepare" in (tmp_path / "job" / "job.log").read_text()


def test_cancel_stops_a_running_stage_and_the_job_ends_cancelled(tmp_path):
    port = free_port()
    stage = Stage("serving", ["studio", "--port", str(port)])  # runs until stopped
    job = Job("long", [stage, Stage("never", ["--version"])], tmp_path / "job").start()
    deadline = time.monotonic() + 60
    while "[studio] serving" not in job.view().log and time.monotonic() < deadline:
        time.sleep(0.5)
    job.cancel()
    view = job.wait(60)
    assert view.status == "cancelled" and view.stage == "serving"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=5)


def test_the_studio_refuses_to_listen_off_loopback_without_users():
    check_exposure("127.0.0.1", [], open_to_all=False)
    check_exposure("0.0.0.0", [("ana", "secret")], open_to_all=False)
    check_exposure("0.0.0.0", [], open_to_all=True)
    with pytest.raises(DreamloomError, match="needs users"):
        check_exposure("0.0.0.0", [], open_to_all=False)
    result = subprocess.run(
        [sys.executable, "-m", "dreamloom.cli", "studio", "--host", "0.0.0.0"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "--auth-file" in result.stderr


def test_users_are_read_as_user_password_entries():
    assert read_users("ana:s3cret, bo:pa:ss\n", "env") == [("ana", "s3cret"), ("bo", "pa:ss")]
    with pytest.raises(DreamloomError, match="user:password"):
        read_users("ana", "env")


def test_with_users_the_page_and_its_api_need_a_login(tmp_path):
    port = free_port()
    page = launch(Studio(StudioSettings(work=tmp_path)), port=port, auth=[("ana", "s3cret")], block=False)
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/config").status_code == 401
        with httpx.Client() as browser:
            assert browser.post(f"{url}/login", data={"username": "ana", "password": "wrong"}).status_code == 400
            assert browser.post(f"{url}/login", data={"username": "ana", "password": "s3cret"}).status_code == 200
            assert browser.get(f"{url}/config").status_code == 200
    finally:
        page.close()


def test_a_painted_area_becomes_the_inpainting_mask():
    picture = Image.new("RGB", (64, 64), (200, 200, 200))
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    layer.paste((255, 0, 255, 255), (16, 16, 32, 40))
    background, mask = generate.painted_mask({"background": picture, "layers": [layer], "composite": picture})
    painted = np.asarray(mask)[..., 0] == 255
    assert background.size == (64, 64) and painted.sum() == 16 * 24 and painted[16:40, 16:32].all()
    with pytest.raises(DreamloomError, match="no area painted"):
        generate.painted_mask({"background": picture, "layers": [Image.new("RGBA", (64, 64))]})
    with pytest.raises(DreamloomError, match="needs a picture"):
        generate.painted_mask(None)


def test_a_sketch_becomes_white_strokes_on_black_and_a_photo_its_edges():
    sketch = Image.new("RGB", (64, 64), "white")
    sketch.paste((0, 0, 0), (10, 30, 54, 34))
    drawn = np.asarray(generate.condition({"composite": sketch}, "as drawn"))
    assert drawn[32, 20].tolist() == [255, 255, 255] and drawn[5, 5].tolist() == [0, 0, 0]
    photo = Image.new("RGB", (64, 64), "black")
    photo.paste((255, 255, 255), (16, 16, 48, 48))
    edges = np.asarray(generate.condition(photo, "canny"))
    assert edges[15, 30].max() == 255 and edges[32, 32].max() == 0  # on the square's border, not inside
    with pytest.raises(DreamloomError, match="needs a condition"):
        generate.condition(None, "canny")


def test_a_recipe_names_its_pictures_by_digest_and_keeps_no_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    request = ImageRequest("a sks shape", mode="img2img", init_image=buffer.getvalue(), seed=3)
    recipe = generate.Rendered(Image.new("RGB", (8, 8)), request).recipe
    assert "init_image" not in recipe and len(recipe["init_image_sha256"]) == 64
    assert (recipe["prompt"], recipe["seed"], recipe["mode"]) == ("a sks shape", 3, "img2img")


@pytest.mark.slow
def test_sigterm_stops_the_studio_and_the_triton_it_started(tmp_path):
    import os
    import signal

    port = free_port()
    env = {**os.environ, "DREAMLOOM_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "dreamloom.cli", "studio", "--serve-local", "--port", str(port)]
    studio = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in studio.stdout:
        if "[studio] serving" in line:
            break
    triton = line.split("Triton: ")[1].split(")")[0]
    assert httpx.get(f"http://{triton}/v2/health/ready", timeout=5).status_code == 200
    studio.send_signal(signal.SIGTERM)
    assert studio.wait(60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{triton}/v2/health/ready", timeout=5)
