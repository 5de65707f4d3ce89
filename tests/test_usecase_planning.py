"""What the use cases decide before talking to a server: plans, masks, recipes, metrics, classifiers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dreamloom.errors import DreamloomError
from dreamloom.toy import world
from dreamloom.usecases.ad import Brief, plan_ads, read_brief
from dreamloom.usecases.augment import AugmentSettings, balanced_scores, read_classes, score, train_classifier
from dreamloom.usecases.jobs import RECIPE_FILE, Staged, load_recipe, multiple_of_eight
from dreamloom.usecases.pictures import region_mask
from dreamloom.usecases.tryon import plan_tryon


def test_a_brief_names_the_product_in_every_scene(tmp_path):
    brief = Brief(subject="a sks shoe", scenes=["on a beach", "{subject} in the rain"], style_words="studio light")
    assert brief.prompts() == ["a sks shoe on a beach, studio light", "a sks shoe in the rain, studio light"]
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(DreamloomError, match="is incomplete: subject: Field required; scenes: Field required"):
        read_brief(tmp_path / "empty.yaml")


def test_an_ad_plan_gives_every_prompt_its_variants_with_consecutive_seeds():
    recipe, staged = plan_ads(
        "shoe@champion", ["a", "b"], variants=3, seed=40, style="brand@champion", style_weight=0.5
    )
    assert [(r.prompt, r.seed) for r in recipe.renders] == [
        ("a", 40),
        ("a", 41),
        ("a", 42),
        ("b", 40),
        ("b", 41),
        ("b", 42),
    ]
    assert recipe.adapter == "shoe@champion*1, brand@champion*0.5" and recipe.mode == "txt2img"
    assert staged.files == {} and recipe.exact
    with pytest.raises(DreamloomError, match="needs both --layout"):
        plan_ads("shoe@champion", ["a"], layout_adapter="layout@champion")
    with pytest.raises(DreamloomError, match="--variants 0 is out of range"):
        plan_ads("shoe@champion", ["a"], variants=0)


def test_the_region_heuristic_finds_the_persons_upper_body():
    person = world.render(world.Scene("square", "blue", "plain", "white"), 0, layout=(32, 32, 20))
    mask = np.asarray(region_mask(person, "upper")) > 0
    rows = np.nonzero(mask.any(axis=1))[0]
    body = np.nonzero((np.abs(np.asarray(person).astype(int) - 244).sum(axis=2) > 60).any(axis=1))[0]
    assert body[0] <= rows[0] < rows[-1] < body[0] + 0.65 * (body[-1] - body[0])
    with pytest.raises(DreamloomError, match="no person found"):
        region_mask(Image.new("RGB", (64, 64), "white"), "upper")


def test_tryon_plans_refuse_ambiguous_or_missing_masks(tmp_path):
    person = tmp_path / "person.png"
    world.render(world.Scene("circle", "red", "plain", "white"), 0).save(person)
    with pytest.raises(DreamloomError, match="--mask FILE or --region"):
        plan_tryon("jacket@champion", person, "a jacket")
    empty = tmp_path / "empty.png"
    Image.new("L", (64, 64), 0).save(empty)
    with pytest.raises(DreamloomError, match="is empty"):
        plan_tryon("jacket@champion", person, "a jacket", mask=empty)
    recipe, staged = plan_tryon("jacket@champion", person, "a jacket", region="full")
    assert recipe.keep_outside_mask and set(staged.files) == {"person.png", "mask.png"}


def test_a_recipe_refuses_inputs_changed_after_it_was_written(tmp_path):
    staged = Staged()
    name = staged.add("layout", Image.new("RGB", (64, 64), "white"))
    recipe, _ = plan_ads("shoe@champion", ["a"], variants=1)
    recipe = recipe.model_copy(update={"inputs": {"control_image": name}, "digests": staged.digests()})
    staged.write(tmp_path)
    (tmp_path / RECIPE_FILE).write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    loaded, folder = load_recipe(tmp_path)
    assert loaded.requests(folder)[0].control_image == staged.files[name]
    Image.new("RGB", (64, 64), "black").save(tmp_path / "inputs" / name)
    with pytest.raises(DreamloomError, match="was changed since the recipe was written"):
        loaded.requests(folder)


def test_generation_sizes_are_multiples_of_eight_within_bounds():
    assert multiple_of_eight(64, 64) == (64, 64)
    assert multiple_of_eight(1001, 667) == (1000, 664)
    assert multiple_of_eight(4000, 3000) == (1024, 768)


def test_balanced_accuracy_and_recall_weigh_every_class_equally():
    actual = np.array([0] * 8 + [1] * 2)
    predicted = np.array([0] * 8 + [0, 1])  # class 0 all right, class 1 half right
    scores = balanced_scores(predicted, actual, 2)
    # recall (1 + 0.5) / 2; balanced accuracy: class 0 (1 + 0.5) / 2, class 1 (0.5 + 1) / 2
    assert (scores.balanced_recall, scores.balanced_accuracy) == (0.75, 0.75)
    skewed = balanced_scores(np.array([0] * 10 + [0, 0, 2]), np.array([0] * 10 + [1, 1, 2]), 3)
    assert skewed.balanced_recall == round((1 + 0 + 1) / 3, 4)  # a plain accuracy would say 0.85
    assert skewed.balanced_accuracy == round(((1 + 1 / 3) / 2 + (0 + 1) / 2 + (1 + 1) / 2) / 3, 4)


def test_classes_with_too_few_images_and_unreadable_ones_are_named(tmp_path):
    for name, count in (("cats", 3), ("dogs", 1)):
        (tmp_path / name).mkdir()
        for index in range(count):
            Image.new("RGB", (8, 8), "red").save(tmp_path / name / f"{index}.png")
    with pytest.raises(DreamloomError, match=r"class 'dogs' .* has 1 images; at least 2 are needed"):
        read_classes(tmp_path, 2)
    (tmp_path / "dogs" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DreamloomError, match=r"1\.png cannot be used"):
        read_classes(tmp_path, 2)
    (tmp_path / "dogs" / "1.png").unlink()
    (tmp_path / "dogs" / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    with pytest.raises(DreamloomError, match=r"phone\.heic are in formats that are not supported; convert them to PNG"):
        read_classes(tmp_path, 1)


def test_a_hub_classifier_loads_from_a_folder_and_trains(tmp_path):
    """The EfficientNet-style path, offline: a tiny image classifier saved as safetensors."""
    from transformers import ResNetConfig, ResNetForImageClassification

    folder = tmp_path / "classifier"
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
    ResNetForImageClassification(config).save_pretrained(folder, safe_serialization=True)
    items = []
    for label, colour in enumerate(("red", "blue")):
        for index in range(4):
            path = tmp_path / f"{colour}{index}.png"
            Image.new("RGB", (32, 32), colour).save(path)
            items.append((path, label))
    settings = AugmentSettings(classifier=str(folder), classifier_steps=20, classifier_batch=8)
    model = train_classifier(items, 2, settings, 32)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)  # the head was replaced for two classes
    assert score(model, items, 2, 32).balanced_recall == 1.0


def test_a_hub_segmenter_loads_from_safetensors_and_never_from_pickles(tmp_path):
    """The try-on segmenter path, offline: a tiny SegFormer whose head always says upper clothes."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    from dreamloom.usecases.pictures import segmentation_mask

    labels = {0: "Background", 1: "Upper-clothes"}
    config = SegformerConfig(
        num_encoder_blocks=1,
        depths=[1],
        sr_ratios=[1],
        hidden_sizes=[8],
        num_attention_heads=[1],
        patch_sizes=[3],
        strides=[2],
        mlp_ratios=[1],
        decoder_hidden_size=8,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = SegformerForSemanticSegmentation(config)
    model.decode_head.classifier.bias.data = torch.tensor([0.0, 10.0])
    pickled, safe = tmp_path / "pickled", tmp_path / "safe"
    for folder in (pickled, safe):
        config.save_pretrained(folder)
        SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    model.save_pretrained(safe)
    person = Image.new("RGB", (48, 40), "gray")
    with pytest.raises(DreamloomError, match="needs safetensors weights"):
        segmentation_mask(person, str(pickled), ["Upper-clothes"])
    mask = segmentation_mask(person, str(safe), ["Upper-clothes"])
    assert mask.size == (48, 40) and np.asarray(mask).min() == 255
    with pytest.raises(DreamloomError, match="found no Pants; it knows: Upper-clothes"):
        segmentation_mask(person, str(safe), ["Pants"])


def test_a_recipe_records_its_sampler_by_name_and_every_request_uses_it(tmp_path):
    recipe, _ = plan_ads("shoe@champion", ["a", "b"], variants=1)
    assert recipe.sampler == "dpmpp_2m"  # what rendered before recipes recorded it
    recipe = recipe.model_validate({**recipe.model_dump(), "sampler": "Euler a"})
    assert recipe.sampler == "euler_a" and {r.sampler for r in recipe.requests(tmp_path)} == {"euler_a"}
    document = recipe.model_dump(mode="json")
    (tmp_path / RECIPE_FILE).write_text(yaml.safe_dump(document))
    assert load_recipe(tmp_path)[0].sampler == "euler_a"
    (tmp_path / RECIPE_FILE).write_text(yaml.safe_dump({k: v for k, v in document.items() if k != "sampler"}))
    assert load_recipe(tmp_path)[0].sampler == "dpmpp_2m"
    (tmp_path / RECIPE_FILE).write_text(yaml.safe_dump({**document, "sampler": "warp drive"}))
    with pytest.raises(DreamloomError, match="unknown sampler 'warp drive'"):
        load_recipe(tmp_path)
