"""`python -m cam_mnist explain` on real test images, colour pictures, other models, and bad input."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from cam_mnist import data, plotting
from cam_mnist.boxes import boxes_from_maps
from cam_mnist.cams import explain
from cam_mnist.config import RunConfig


@pytest.fixture(scope="module")
def test_png(tiny_run, tmp_path_factory, data_dir):
    config = RunConfig.load(tiny_run / "config.json")
    split = data.load_split("test", config.data, data_dir)
    path = tmp_path_factory.mktemp("pictures") / "test_0003.png"
    Image.fromarray(split.images[3]).save(path)
    return path, split.images[3]


def test_reproduces_library_map(tiny_run, test_png, tmp_path, run_cli):
    path, image = test_png
    result = run_cli("explain", path, "--run-dir", tiny_run, "--method", "gradcam", "--json", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)[0]
    model = keras.models.load_model(tiny_run / "model.keras")
    x = (image / np.float32(255))[None, ..., None]
    top = int(np.asarray(model(x)).argmax())
    maps = explain(model, x, "gradcam", top)
    assert record["classes"][0]["class"] == top
    assert record["box"] == boxes_from_maps(maps)[0].tolist()
    written = np.asarray(Image.open(record["output"]).convert("RGB"))
    tile = plotting.captioned(plotting.overlay(x[0], maps[0], map_box=record["box"]), "")
    start = written.shape[1] - tile.shape[1]  # the map is the last tile of the row
    np.testing.assert_array_equal(written[14:, start:], tile[14:])  # below the caption strip


def test_colour_jpeg_of_another_size(tiny_run, tmp_path, run_cli):
    picture = np.full((75, 120, 3), 235, np.uint8)
    picture[20:55, 50:62] = (30, 30, 160)  # a dark stroke on light paper
    Image.fromarray(picture).save(tmp_path / "photo.jpg")
    result = run_cli(
        "explain",
        tmp_path / "photo.jpg",
        "--run-dir",
        tiny_run,
        "--fit",
        "canvas",
        "--top-k",
        "3",
        "--out",
        tmp_path / "out",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert "inverted (dark on light)" in result.stderr and "resized 120x75" in result.stderr
    record = json.loads(result.stdout)[0]
    assert len(record["classes"]) == 3
    probs = [c["probability"] for c in record["classes"]]
    assert probs == sorted(probs, reverse=True)
    assert Image.open(record["output"]).size[0] > 0


def test_folder_and_bad_files(tiny_run, test_png, tmp_path, run_cli):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.open(test_png[0]).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    result = run_cli("explain", folder, tmp_path / "missing.png", "--run-dir", tiny_run, "--out", tmp_path / "out")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "broken.png: not a readable image" in errors[0] and "missing.png: no such file" in errors[1]
    assert (tmp_path / "out" / "good_explained.png").exists()  # the good image was still explained


def test_not_a_keras_model(test_png, tmp_path, run_cli):
    (tmp_path / "model.keras").write_text("not a model")
    result = run_cli("explain", test_png[0], "--model", tmp_path / "model.keras")
    assert result.returncode == 2 and "model.keras: not a Keras model" in result.stderr


def test_model_without_4d_layer(test_png, tmp_path, run_cli):
    inputs = keras.Input((40, 40, 1))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    model.save(tmp_path / "flat.keras")
    result = run_cli("explain", test_png[0], "--model", tmp_path / "flat.keras", "--method", "gradcam")
    assert result.returncode == 2 and "no layer with a 4-D (B, h, w, K) output" in result.stderr


def test_cam_needs_gap_head_but_gradcam_works(test_png, tmp_path, run_cli):
    inputs = keras.Input((40, 40, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x)))
    model.save(tmp_path / "flat_head.keras")
    result = run_cli("explain", test_png[0], "--model", tmp_path / "flat_head.keras", "--method", "cam")
    assert result.returncode == 2 and "CAM needs the layer 'conv'" in result.stderr
    result = run_cli(
        "explain",
        test_png[0],
        "--model",
        tmp_path / "flat_head.keras",
        "--method",
        "gradcam",
        "--out",
        tmp_path,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["box_method"] == "gradcam"


def test_method_all_draws_one_row_per_method(tiny_run, test_png, tmp_path, run_cli):
    # --method all: every registered method, one row each, in registry order; the first one's box is reported.
    from cam_mnist.registry import METHODS

    path, image = test_png
    result = run_cli("explain", path, "--run-dir", tiny_run, "--method", "all", "--json", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)[0]
    written = np.asarray(Image.open(record["output"]).convert("RGB"))
    model = keras.models.load_model(tiny_run / "model.keras")
    x = (image / np.float32(255))[None, ..., None]
    top = int(np.asarray(model(x)).argmax())
    assert list(record["boxes"]) == list(METHODS) and record["box"] == record["boxes"][record["box_method"]]
    tiles = []
    for method in METHODS:  # each row's map tile: that method's map of the top class, with its own box
        maps = explain(model, x, method, top)
        assert record["boxes"][method] == boxes_from_maps(maps)[0].tolist(), method
        tiles.append(plotting.captioned(plotting.overlay(x[0], maps[0], map_box=record["boxes"][method]), ""))
    tile_h, tile_w = tiles[0].shape[:2]
    assert written.shape[0] == len(METHODS) * tile_h
    for i, (method, tile) in enumerate(zip(METHODS, tiles, strict=True)):
        got = written[i * tile_h + 14 : (i + 1) * tile_h, -tile_w:]  # below the caption strip
        np.testing.assert_array_equal(got, tile[14:], err_msg=method)


def test_help_lists_every_command_and_preset(run_cli):
    from cam_mnist.config import PRESETS

    out = run_cli("--help").stdout
    for command in ("data", "train", "eval", "localize", "explain", "frontier", "methods", "bench"):
        assert f"    {command} " in out
    for preset in PRESETS:
        assert f"\n  {preset} " in out, preset
    assert "examples:" in run_cli("explain", "--help").stdout
    bench = run_cli("bench", "--help")  # the benchmark's own arguments, handed on
    assert bench.returncode == 0 and "--slow-images" in bench.stdout


def test_methods_command_prints_the_registry_and_the_readme_shows_it(run_cli, repo_root):
    # The README's methods table is the registry's, verbatim: a method added or renamed without the README fails.
    from cam_mnist.cams import METHODS as CLASSES
    from cam_mnist.registry import METHODS, methods_table

    result = run_cli("methods")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == methods_table()
    assert methods_table() in (repo_root / "README.md").read_text()
    assert list(CLASSES) == list(METHODS)  # the classes are keyed by the registry's names, in its order
    assert all(CLASSES[name].__name__ == info.cls.split(":")[1] for name, info in METHODS.items())
