import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamloom.data import PreparedDataset, PrepareOptions, dataset_hash, prepare_dataset
from dreamloom.errors import DataValidationError, DreamloomError
from tests.helpers import draw_images

OPTIONS = PrepareOptions(resolution=64)


def _png_bomb_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (only 1 row of data follows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _jpeg_bytes(image: Image.Image, **save_options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save_options)
    return buffer.getvalue()


def test_every_bad_file_is_listed_in_one_error_and_nothing_is_written(tmp_path: Path):
    source = draw_images(tmp_path / "photos", count=2)
    (source / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    good_jpeg = _jpeg_bytes(Image.new("RGB", (128, 128), (10, 200, 30)))
    (source / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (source / "notes.jpg").write_text("these are not pixels")
    (source / "bomb.png").write_bytes(_png_bomb_header(100_000, 100_000))
    Image.new("RGB", (40, 40)).save(source / "tiny.png")
    (source / "orphan.txt").write_text("a caption for nothing")
    frames = [Image.new("RGB", (128, 128), colour) for colour in ("red", "blue")]
    frames[0].save(source / "animated.gif", save_all=True, append_images=frames[1:])
    (source / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (source / "latin1.png").write_bytes((source / "image_0.png").read_bytes())
    (source / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    output = tmp_path / "prepared"

    with pytest.raises(DataValidationError) as error:
        prepare_dataset(source, output, PrepareOptions(resolution=64, upscale=False))

    problems = dict(error.value.problems)
    assert set(problems) == {
        "phone.heic",
        "corrupt.png",
        "truncated.jpg",
        "notes.jpg",
        "bomb.png",
        "tiny.png",
        "orphan.txt",
        "animated.gif",
        "latin1.png",
    }
    assert "truncated" in problems["truncated.jpg"] or "corrupt" in problems["truncated.jpg"]
    assert "not a PNG, JPEG, WebP, BMP, TIFF or GIF image" in problems["notes.jpg"]
    assert "decompression bomb" in problems["bomb.png"]
    assert "too small" in problems["tiny.png"] and "data.upscale_small_images=true" in problems["tiny.png"]
    assert "caption without an image" in problems["orphan.txt"]
    assert "has 2 frames" in problems["animated.gif"] and "convert to PNG" in problems["phone.heic"]
    assert "UTF-8" in problems["latin1.png"]
    message = str(error.value)
    assert "9 problem(s)" in message and "nothing was written" in message
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]  # no staging folders left behind


def test_small_images_are_upscaled_with_a_warning_naming_them_unless_refused(tmp_path: Path, caplog):
    source = draw_images(tmp_path / "photos", count=2)
    Image.new("RGB", (48, 40), "orange").save(source / "small.png")
    with caplog.at_level("WARNING", logger="dreamloom.data.prepare"):
        dataset = prepare_dataset(source, tmp_path / "prepared", OPTIONS)
    assert "1 image(s) smaller than the training size" in caplog.text and "small.png (48x40)" in caplog.text
    assert "image_0.png" not in caplog.text  # only the upscaled one is named
    assert {Image.open(dataset.root / item.image).size for item in dataset.items} == {(64, 64)}
    with pytest.raises(DataValidationError, match=r"small.png: 48x40 is too small for 64x64"):
        prepare_dataset(source, tmp_path / "refused", PrepareOptions(resolution=64, upscale=False))
    assert not (tmp_path / "refused").exists()


def test_training_and_serving_accept_the_same_still_formats_and_refuse_animations(tmp_path: Path):
    """PNG, JPEG, WebP, BMP, TIFF and GIF stills train and serve alike; an animation is refused by both."""
    from dreamloom.serving.protocol import RequestError, decode_image

    source = tmp_path / "photos"
    source.mkdir()
    picture = Image.new("RGB", (64, 64), (200, 80, 20))
    for suffix, options in {".png": {}, ".jpg": {}, ".webp": {}, ".bmp": {}, ".tiff": {}, ".gif": {}}.items():
        picture.save(source / f"still{suffix}", **options)
        served = decode_image("init_image", (source / f"still{suffix}").read_bytes())
        assert served.size == (64, 64) and served.mode == "RGB", suffix
    dataset = prepare_dataset(source, tmp_path / "prepared", OPTIONS)
    assert len(dataset.items) == 6
    pages = tmp_path / "pages.tiff"
    picture.save(pages, save_all=True, append_images=[Image.new("RGB", (64, 64), "blue")])
    with pytest.raises(RequestError, match="INIT_IMAGE cannot be decoded: has 2 frames"):
        decode_image("init_image", pages.read_bytes())


def test_empty_and_missing_folders_are_refused(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DataValidationError, match="no images found"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out", OPTIONS)
    with pytest.raises(DreamloomError, match="does not exist"):
        prepare_dataset(tmp_path / "nowhere", tmp_path / "out", OPTIONS)
    assert not (tmp_path / "out").exists()


def test_odd_but_valid_modes_are_converted_to_rgb(tmp_path: Path):
    source = tmp_path / "modes"
    source.mkdir()
    Image.new("CMYK", (80, 80), (0, 255, 255, 0)).save(source / "cmyk.jpg")  # red in CMYK
    Image.fromarray(np.full((80, 80), 32768, dtype=np.uint16)).save(source / "gray16.png")
    rgba = Image.new("RGBA", (80, 80), (0, 0, 255, 0))  # fully transparent blue
    rgba.save(source / "transparent.png")
    palette = Image.new("P", (80, 80), 3)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    palette.save(source / "palette.png", transparency=0)
    Image.new("LA", (80, 80), (10, 255)).save(source / "gray_alpha.png")
    Image.new("1", (80, 80), 1).save(source / "bilevel.png")
    Image.new("RGB", (80, 80), (0, 128, 0)).save(source / "green.webp", lossless=True)

    dataset = prepare_dataset(source, tmp_path / "out", OPTIONS)

    pixels = {item.source: np.asarray(Image.open(dataset.root / item.image)) for item in dataset.items}
    assert {name: array.shape for name, array in pixels.items()} == {name: (64, 64, 3) for name in pixels}
    center = {name: tuple(int(v) for v in array[32, 32]) for name, array in pixels.items()}
    assert center["cmyk.jpg"][0] > 200 and center["cmyk.jpg"][1] < 50
    assert all(abs(v - 128) <= 1 for v in center["gray16.png"])  # 16-bit half scale -> 8-bit half scale
    assert center["transparent.png"] == (255, 255, 255)  # alpha flattened on white
    assert center["palette.png"] == (0, 0, 255)  # palette index 3 is blue, index 0 is transparent
    assert center["gray_alpha.png"] == (10, 10, 10)
    assert center["bilevel.png"] == (255, 255, 255)
    assert center["green.webp"] == (0, 128, 0)


def test_exif_orientation_is_applied(tmp_path: Path):
    source = tmp_path / "rotated"
    source.mkdir()
    image = Image.new("RGB", (160, 80), (255, 0, 0))
    image.paste((0, 0, 255), (80, 0, 160, 80))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    (source / "phone.jpg").write_bytes(_jpeg_bytes(image, exif=exif, quality=95))

    dataset = prepare_dataset(source, tmp_path / "out", PrepareOptions(resolution=64, bucketing=True))

    item = dataset.items[0]
    assert item.original_size == (80, 160)  # upright: portrait
    assert item.size[1] > item.size[0]
    upright = np.asarray(Image.open(dataset.root / item.image)).astype(int)
    assert upright[2, upright.shape[1] // 2, 0] > 200  # red on top after rotating clockwise
    assert upright[-3, upright.shape[1] // 2, 2] > 200  # blue at the bottom


def test_center_crop_and_bucketing(tmp_path: Path):
    source = draw_images(tmp_path / "wide", count=2, size=(256, 128))
    square = prepare_dataset(source, tmp_path / "square", OPTIONS)
    assert {item.size for item in square.items} == {(64, 64)}
    assert square.items[0].crop_top_left == (0, 32)  # 128x64 resized, 32 px cut each side
    bucketed = prepare_dataset(source, tmp_path / "bucketed", PrepareOptions(resolution=64, bucketing=True))
    ((width, height),) = {item.size for item in bucketed.items}
    assert width > height and width % 8 == 0 and height % 8 == 0
    assert width * height <= 64 * 64 * 1.1


def test_captions_are_read_and_normalised(tmp_path: Path):
    source = draw_images(tmp_path / "captioned", count=2)
    (source / "image_0.txt").write_text("  a photo of\n sks ball  \n")
    (source / "image_1.txt").write_text("   ")
    dataset = prepare_dataset(source, tmp_path / "out", OPTIONS)
    assert [item.caption for item in dataset.items] == ["a photo of sks ball", None]
    manifest = json.loads((dataset.root / "dataset.json").read_text())
    assert manifest["dataset_hash"] == dataset.dataset_hash


def test_content_hash_follows_content_not_location(tmp_path: Path):
    first = draw_images(tmp_path / "a", count=3, captions=True)
    second = draw_images(tmp_path / "b", count=3, captions=True)
    assert dataset_hash(first) == dataset_hash(second)
    (second / "image_1.txt").write_text("a different caption")
    changed_caption = dataset_hash(second)
    assert changed_caption != dataset_hash(first)
    Image.new("RGB", (96, 80), (1, 2, 3)).save(second / "image_2.png")
    assert dataset_hash(second) not in (changed_caption, dataset_hash(first))


def test_preparing_again_reuses_the_prepared_set(tmp_path: Path):
    source = draw_images(tmp_path / "photos", count=2)
    first = prepare_dataset(source, tmp_path / "out", OPTIONS)
    written = (first.root / "dataset.json").stat().st_mtime_ns
    again = prepare_dataset(source, tmp_path / "out", OPTIONS)
    assert (again.root / "dataset.json").stat().st_mtime_ns == written
    assert PreparedDataset.load(tmp_path / "out").dataset_hash == first.dataset_hash
    copy = draw_images(tmp_path / "same pictures elsewhere", count=2)
    reused = prepare_dataset(copy, tmp_path / "out", OPTIONS)  # the same content: the cache's way in
    assert reused.root == first.root and reused.source == str(copy.absolute())  # lineage names this folder
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "keep.txt").write_text("mine")
    with pytest.raises(DreamloomError, match="not a prepared dataset"):
        prepare_dataset(source, tmp_path / "occupied", OPTIONS)
    assert (tmp_path / "occupied" / "keep.txt").read_text() == "mine"


def test_a_prepared_set_named_by_a_relative_path_loads_with_an_absolute_root(tmp_path, monkeypatch):
    """A remote job finds its staged set at a relative path; the Ray workers that read the root run
    in other folders, so the loaded root must not stay relative."""
    prepare_dataset(draw_images(tmp_path / "photos"), tmp_path / "staged" / "instance", PrepareOptions(64))
    monkeypatch.chdir(tmp_path / "staged")
    loaded = PreparedDataset.load(Path("instance"))
    assert loaded.root == tmp_path / "staged" / "instance" and loaded.root.is_absolute()


@pytest.mark.parametrize("kind", ["canny", "scribble"])
def test_edge_conditions_are_extracted_from_each_prepared_image(tmp_path, kind):
    source = draw_images(tmp_path / "photos", count=2)
    dataset = prepare_dataset(source, tmp_path / "out", PrepareOptions(resolution=64, condition=kind))
    assert dataset.condition == kind
    for item in dataset.items:
        condition = np.asarray(Image.open(dataset.root / item.condition))
        assert condition.shape == (64, 64, 3)
        assert set(np.unique(condition)) == {0, 255}  # white lines on black


def test_mask_conditions_come_from_companions_cropped_like_their_image(tmp_path):
    source = tmp_path / "garments"
    source.mkdir()
    Image.new("RGB", (128, 64), (90, 120, 200)).save(source / "shirt.png")
    mask = Image.new("L", (128, 64), 0)
    mask.paste(255, (0, 0, 48, 64))  # left 48 columns are the garment
    mask.save(source / "shirt.mask.png")
    dataset = prepare_dataset(source, tmp_path / "out", PrepareOptions(resolution=64, condition="mask"))
    (item,) = dataset.items  # the companion is not an instance image
    condition = np.asarray(Image.open(dataset.root / item.condition))[:, :, 0]
    # The image was center-cropped from x=32 to x=96, so the mask's edge moved to x=16.
    assert condition[:, :16].min() == 255 and condition[:, 17:].max() == 0


def test_companion_problems_are_listed_before_anything_is_written(tmp_path):
    source = draw_images(tmp_path / "photos", count=3)
    Image.new("RGB", (96, 80)).save(source / "image_0.cond.png")
    Image.new("RGB", (50, 50)).save(source / "image_1.cond.png")
    Image.new("RGB", (96, 80)).save(source / "lonely.cond.png")
    with pytest.raises(DataValidationError) as error:
        prepare_dataset(source, tmp_path / "out", PrepareOptions(resolution=64, condition="user"))
    problems = dict(error.value.problems)
    assert "must match" in problems["image_1.png"]
    assert "needs image_2.cond.png" in problems["image_2.png"]
    assert "condition without an image" in problems["lonely.cond.png"]
    assert "image_0.png" not in problems
    assert not (tmp_path / "out").exists()


def test_symbolic_links_are_refused_by_name_and_nothing_is_written(tmp_path):
    """A link would carry a host file into the prepared set and from there into MLflow."""
    source = draw_images(tmp_path / "photos", count=2)
    secret = tmp_path / "elsewhere" / "environ"
    secret.parent.mkdir()
    secret.write_text("AWS_SECRET_ACCESS_KEY=do-not-log-me")
    outside_image = draw_images(tmp_path / "outside", count=1)
    (source / "img0.txt").symlink_to(secret)  # a caption that is a host file
    (source / "borrowed.png").symlink_to(next(outside_image.glob("*.png")))
    with pytest.raises(DataValidationError) as error:
        prepare_dataset(source, tmp_path / "out", OPTIONS)
    message = str(error.value)
    assert "img0.txt: is a symbolic link" in message and "borrowed.png: is a symbolic link" in message
    assert "do-not-log-me" not in message and not (tmp_path / "out").exists()


def test_remote_staging_copies_regular_files_and_refuses_links(tmp_path):
    from dreamloom.data.prepare import copy_data_folder

    source = draw_images(tmp_path / "photos", count=2)
    (source / ".cache").write_text("hidden")
    copy_data_folder(source, tmp_path / "staged")
    assert sorted(p.name for p in (tmp_path / "staged").iterdir()) == sorted(p.name for p in source.glob("*.png"))
    (source / "sub").mkdir()
    (source / "sub" / "key").symlink_to("/etc/hostname")
    with pytest.raises(DataValidationError, match=r"sub/key: is a symbolic link"):
        copy_data_folder(source, tmp_path / "staged-again")
    assert not (tmp_path / "staged-again").exists()


def test_a_prepared_set_naming_files_outside_it_is_refused(tmp_path):
    dataset = prepare_dataset(draw_images(tmp_path / "photos", count=2), tmp_path / "out", OPTIONS)
    image = dataset.root / dataset.items[0].image
    image.unlink()
    image.symlink_to(next((tmp_path / "photos").glob("*.png")))
    with pytest.raises(DreamloomError, match="symbolic link"):
        PreparedDataset.load(dataset.root)
    manifest = json.loads((dataset.root / "dataset.json").read_text())
    manifest["items"][0]["image"] = "../photos/" + next((tmp_path / "photos").glob("*.png")).name
    (dataset.root / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DreamloomError, match="outside it"):
        PreparedDataset.load(dataset.root)


def test_captions_are_bounded_and_read_no_further_than_the_bound(tmp_path):
    from dreamloom.data.prepare import MAX_CAPTION_CHARS

    source = draw_images(tmp_path / "photos", count=2)
    first, second = sorted(source.glob("*.png"))
    (source / f"{first.stem}.txt").write_text("a " * MAX_CAPTION_CHARS)
    (source / f"{second.stem}.txt").write_bytes(b"x" * 10_000_000)  # 10 MB: refused after 4 KB
    with pytest.raises(DataValidationError) as error:
        prepare_dataset(source, tmp_path / "out", OPTIONS)
    assert str(error.value).count(f"longer than {MAX_CAPTION_CHARS} characters") == 2


def test_a_folder_over_the_total_pixel_budget_is_refused_from_its_headers(tmp_path):
    source = draw_images(tmp_path / "photos", count=3)
    with pytest.raises(DataValidationError, match=r"its 3 images hold 0 megapixels, over the budget of 0"):
        prepare_dataset(source, tmp_path / "out", PrepareOptions(resolution=64, max_total_pixels=1000))
    assert prepare_dataset(source, tmp_path / "ok", PrepareOptions(resolution=64, max_total_pixels=10**6)).items
