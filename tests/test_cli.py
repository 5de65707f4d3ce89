import json

import pytest
import ray
from PIL import Image

from dreamloom import __version__
from dreamloom.cli import main
from dreamloom.errors import EXIT_INPUT, EXIT_UNREACHABLE, EXIT_USAGE
from dreamloom.training.local import train_in_process
from tests.helpers import draw_images, method_config

TRAIN = ["train", "--method", "lora", "--instance-prompt", "a photo of sks ball", "--resolution", "64"]


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_exit_codes_tell_usage_input_and_unreachable_services_apart(tmp_path, monkeypatch, capsys):
    """2 usage (argparse), 3 input, 4 a service unreachable, naming where it was looked for (the
    gate's 1 is in test_registry, the load tool's in test_serving)."""
    from dreamloom.serving.server import free_port

    with pytest.raises(SystemExit) as usage:
        main(["train", "--no-such-flag"])
    assert usage.value.code == EXIT_USAGE
    capsys.readouterr()
    assert main(["generate", "--url", "127.0.0.1:1", "--prompt", "x", "--mode", "inpaint", "--out", "o"]) == EXIT_INPUT
    capsys.readouterr()
    port = free_port()  # nothing listens there
    assert main(["generate", "--url", f"127.0.0.1:{port}", "--prompt", "x", "--out", str(tmp_path)]) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert f"could not reach Triton at http://127.0.0.1:{port}" in err and "dreamloom serve" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert main(["registry", "list"]) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert f"could not reach MLflow at http://127.0.0.1:{port}" in err and "Traceback" not in err


def test_print_config_merges_flags_and_set(tmp_path, capsys):
    code = main(
        [*TRAIN, "--data", str(tmp_path), "--output", str(tmp_path / "o"), "--set", "lora.rank=16", "--steps", "7",
         "--print-config"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "rank: 16" in out and "steps: 7" in out and "method: lora" in out


def test_invalid_config_exits_2_naming_field_and_choices(tmp_path, capsys):
    code = main(
        ["train", "--method", "textual-inversio", "--data", str(tmp_path), "--instance-prompt", "x", "--output", "o"]
    )
    err = capsys.readouterr().err
    assert code == EXIT_INPUT
    assert "method" in err and "'dreambooth-lora'" in err and "Traceback" not in err


def test_bad_images_are_refused_before_any_model_ray_or_mlflow_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DREAMLOOM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DREAMLOOM_CACHE", str(tmp_path / "cache"))
    photos = draw_images(tmp_path / "photos", count=2)
    (photos / "broken.png").write_bytes(b"not a png at all")
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue")]
    frames[0].save(photos / "animated.gif", save_all=True, append_images=frames[1:])
    was_running = ray.is_initialized()
    code = main([*TRAIN, "--data", str(photos), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT
    assert "broken.png" in err and "animated.gif: has 2 frames" in err and "nothing was written" in err
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "cache" / "models").exists()  # no base model was built or loaded
    assert not (tmp_path / "home" / "mlflow.db").exists()  # no tracking run was opened
    assert ray.is_initialized() == was_running


def test_prepare_command(tmp_path, capsys):
    photos = draw_images(tmp_path / "photos", count=3)
    assert main(["prepare", "--data", str(photos), "--out", str(tmp_path / "prepared"), "--resolution", "64"]) == 0
    assert "prepared 3 images" in capsys.readouterr().out
    assert len(list((tmp_path / "prepared" / "images").glob("*.png"))) == 3


@pytest.mark.slow
def test_generate_local_writes_images_grid_and_index(lora_run, tmp_path, capsys):
    result, _, _ = lora_run
    out = tmp_path / "renders"
    code = main(
        ["generate-local", "--artifact", str(result.artifact), "--prompt", "a photo of sks ball", "--prompt",
         "sks ball on a beach", "--num-images", "2", "--steps", "3", "--seed", "10", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    index = json.loads((out / "images.json").read_text())
    prompts = ["a photo of sks ball", "sks ball on a beach"]
    assert [(i["prompt"], i["seed"]) for i in index] == [(p, seed) for p in prompts for seed in (10, 11)]
    assert Image.open(out / "grid.png").size == (128, 128)
    assert all(Image.open(out / i["file"]).size == (64, 64) for i in index)


@pytest.mark.slow
def test_generate_local_refuses_bad_requests(lora_run, tmp_path, capsys):
    result, _, _ = lora_run
    base = ["generate-local", "--artifact", str(result.artifact), "--prompt", "x", "--out", str(tmp_path / "o")]
    assert main([*base, "--size", "big"]) == EXIT_INPUT
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
    assert main([*base, "--steps", "0"]) == EXIT_INPUT
    assert "steps must be between 1 and 200" in capsys.readouterr().err
    assert (
        main(["generate-local", "--artifact", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o")])
        == EXIT_INPUT
    )
    assert "no dreamloom.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_kohya_commands_round_trip(lora_run, tmp_path, capsys):
    result, _, _ = lora_run
    exported = tmp_path / "sneaker.safetensors"
    assert main(["lora", "export-kohya", str(result.artifact), "--out", str(exported)]) == 0
    assert (
        main(["lora", "import-kohya", str(exported), "--base-model", "tiny", "--output", str(tmp_path / "back")]) == 0
    )
    assert (tmp_path / "back" / "dreamloom.json").is_file()
    pickled = tmp_path / "old.pt"
    pickled.write_bytes(b"\x80\x04")
    assert (
        main(["lora", "import-kohya", str(pickled), "--base-model", "tiny", "--output", str(tmp_path / "x")])
        == EXIT_INPUT
    )
    assert "never loads pickled" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resume_without_a_run_says_so_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DREAMLOOM_HOME", str(tmp_path / "home"))
    photos = draw_images(tmp_path / "photos", count=2)
    code = main([*TRAIN, "--data", str(photos), "--output", str(tmp_path / "never-ran"), "--resume"])
    assert code == EXIT_INPUT
    assert "nothing to resume" in capsys.readouterr().err


def test_runs_whose_output_folders_share_a_name_keep_their_checkpoints_apart(tmp_path, monkeypatch):
    """Checkpoints live beside the output (.<output>.checkpoints/), as diffusers and kohya keep them:
    a run into projects/b/out is not mistaken for the earlier run into projects/a/out."""
    from dreamloom.errors import DreamloomError
    from dreamloom.training.job import run_storage
    from dreamloom.training.local import _checked_job

    monkeypatch.setenv("DREAMLOOM_HOME", str(tmp_path / "home"))
    photos = draw_images(tmp_path / "photos", count=2)
    first, second = (method_config("lora", photos, tmp_path / project / "out") for project in ("a", "b"))
    assert run_storage(first) == str(tmp_path / "a" / ".out.checkpoints")
    _checked_job(first, run_storage(first), resume=False)  # records the run, as train does before Ray starts
    _checked_job(second, run_storage(second), resume=False)  # another project's "out": no collision
    with pytest.raises(DreamloomError, match="already has training state"):
        _checked_job(first, run_storage(first), resume=False)  # the same one again: resuming stays explicit
    _checked_job(first, run_storage(first), resume=True)


@pytest.mark.slow
def test_a_training_log_written_to_a_file_holds_progress_not_colour_codes_or_tracebacks(tmp_path):
    """`dreamloom train ... > train.log 2>&1`, as a scheduler or nohup runs it: the steps' progress
    is there; Ray's colour codes and its preemption watcher's failing polls are not."""
    import os
    import subprocess
    import sys

    photos = draw_images(tmp_path / "photos", count=2)
    environment = {
        **os.environ,
        "DREAMLOOM_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    command = [sys.executable, "-m", "dreamloom.cli", *TRAIN, "--data", str(photos), "--out", str(tmp_path / "out")]
    with open(tmp_path / "train.log", "w") as log:
        done = subprocess.run([*command, "--steps", "4"], stdout=log, stderr=subprocess.STDOUT, env=environment)
    text = (tmp_path / "train.log").read_text()
    assert done.returncode == 0, text[-3000:]
    assert "[train] " in text and "4/4 (100%)" in text
    assert "\x1b[" not in text and "\r" not in text
    assert "PreemptionWatcher" not in text and "Traceback" not in text, text[-3000:]


def test_method_flags_reach_the_config(tmp_path, capsys):
    code = main(
        ["train", "--method", "textual-inversion", "--data", str(tmp_path), "--output", str(tmp_path / "o"),
         "--instance-prompt", "a photo of <my-mug>", "--placeholder-token", "<my-mug>", "--num-vectors", "3",
         "--initializer-token", "mug", "--print-config"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "placeholder_token: <my-mug>" in out and "num_vectors: 3" in out
    code = main([*TRAIN, "--method", "controlnet", "--condition", "sketch", "--data", str(tmp_path), "--output", "o"])
    assert code == EXIT_INPUT and "'scribble'" in capsys.readouterr().err


def test_generate_local_follows_a_control_image_from_a_photo(tmp_path, capsys):
    photos = draw_images(tmp_path / "photos", count=2)
    artifact = train_in_process(method_config("controlnet", photos, tmp_path / "cn", training__steps=1))
    base = ["generate-local", "--artifact", str(artifact), "--prompt", "a ball", "--steps", "2", "--num-images", "1"]
    assert main([*base, "--out", str(tmp_path / "a")]) == EXIT_INPUT
    assert "needs a control image" in capsys.readouterr().err
    photo = str(photos / "image_0.png")
    assert main([*base, "--control-image", photo, "--control-from-photo", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "grid.png").is_file()


def test_hypernetwork_import_refuses_code_in_pickles(tmp_path, capsys):
    import os

    import torch

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({768: Exploit()}, tmp_path / "evil.pt")
    args = [
        "hypernetwork",
        "import-a1111",
        str(tmp_path / "evil.pt"),
        "--base-model",
        "tiny",
        "--output",
        str(tmp_path / "o"),
    ]
    assert main(args) == EXIT_INPUT
    assert "refused to unpickle" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "o").exists()
