import os
from pathlib import Path

import pytest

from dreamloom.config import dump_run_config, load_run_config, parse_override, validate_run_config
from dreamloom.errors import ConfigError
from tests.helpers import run_config

MINIMAL = {
    "method": "lora",
    "data": {"path": "photos", "instance_prompt": "a photo of sks shoe"},
    "output": "out",
}


def test_minimal_config_gets_documented_defaults():
    config = validate_run_config(MINIMAL)
    assert config.base_model == "tiny"
    assert config.data.resolution == 512
    assert config.lora.effective_alpha == 4.0
    assert config.effective_run_name == "out"
    assert config.validation_prompts == ["a photo of sks shoe"]
    assert not config.prior_enabled


def test_unknown_method_names_the_field_and_the_allowed_values():
    with pytest.raises(ConfigError) as error:
        validate_run_config({**MINIMAL, "method": "loraa"})
    message = str(error.value)
    assert "method" in message and "'lora'" in message and "'dreambooth'" in message and "'loraa'" in message


def test_unknown_field_lists_the_known_fields_of_its_section():
    with pytest.raises(ConfigError) as error:
        validate_run_config({**MINIMAL, "training": {"stepz": 10}})
    message = str(error.value)
    assert "training.stepz: unknown field" in message
    assert "steps" in message and "batch_size" in message


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("training.steps", 0, "greater than or equal to 1"),
        ("data.resolution", 100, "multiple of 8"),
        ("lora.rank", 0, "greater than or equal to 1"),
        ("lora.dropout", 1.5, "less than 1"),
        ("optimizer.learning_rate", -1, "greater than 0"),
        ("optimizer.lr_scheduler", "cosine_annealing", "'cosine'"),
        ("training.mixed_precision", "fp8", "'bf16'"),
        ("optimizer.weight_decay", float("inf"), "finite number"),  # passes ge=0, trains to NaN
        ("lora.alpha", float("nan"), "finite number"),
    ],
)
def test_out_of_range_values_are_refused_with_the_field_name(field, value, fragment):
    with pytest.raises(ConfigError) as error:
        load_run_config(
            None, {"method": "lora", "data.path": "p", "data.instance_prompt": "x", "output": "o", field: value}
        )
    assert field in str(error.value)
    assert fragment in str(error.value)


def test_dreambooth_needs_a_class_prompt_unless_prior_is_off():
    with pytest.raises(ConfigError, match="class_prompt"):
        validate_run_config({**MINIMAL, "method": "dreambooth"})
    config = validate_run_config({**MINIMAL, "method": "dreambooth", "prior": {"class_prompt": "a photo of a shoe"}})
    assert config.prior_enabled
    assert not validate_run_config({**MINIMAL, "method": "dreambooth", "prior": {"enabled": False}}).prior_enabled


def test_yaml_file_plus_dotted_overrides(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("method: lora\ndata: {path: photos, instance_prompt: a sks shoe}\noutput: out\nlora: {rank: 4}\n")
    config = load_run_config(path, dict([parse_override("lora.rank=16"), parse_override("training.snr_gamma=5.0")]))
    assert config.lora.rank == 16
    assert config.training.snr_gamma == 5.0
    assert validate_run_config(__import__("yaml").safe_load(dump_run_config(config))) == config


def test_config_file_problems_are_reported_plainly(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: [lora\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- lora\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_run_config(listing)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("lora.rank")


@pytest.mark.parametrize(
    "example", sorted((Path(__file__).parent.parent / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_example_configs_are_valid(example: Path):
    config = load_run_config(example)
    assert config.output.parts[0] == "out"


def test_workers_share_the_local_rays_cores_unless_told(tmp_path, monkeypatch):
    from dreamloom.training.local import cpus_per_worker

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    shared = run_config(tmp_path, tmp_path / "out", scaling__cpus_per_worker=None, scaling__workers=2)
    assert cpus_per_worker(shared, ray_cpus=16) == 8
    assert cpus_per_worker(shared, ray_cpus=1) == 1  # never zero
    told = run_config(tmp_path, tmp_path / "out", scaling__cpus_per_worker=3, scaling__workers=2)
    assert cpus_per_worker(told, ray_cpus=16) == 3
    from dreamloom.settings import local_ray_cpus

    monkeypatch.setenv("DREAMLOOM_RAY_CPUS", "3")
    assert local_ray_cpus() == 3
    monkeypatch.delenv("DREAMLOOM_RAY_CPUS")
    assert local_ray_cpus() == os.cpu_count()
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a cluster: its pods are sized there
    assert cpus_per_worker(shared, ray_cpus=64) == 1


def test_a_bare_yaml_no_for_mixed_precision_means_full_precision():
    config = load_run_config(None, {**MINIMAL, "training.mixed_precision": parse_override("x=no")[1]})
    assert config.training.mixed_precision == "no"
