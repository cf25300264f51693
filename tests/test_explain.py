"""`python -m cam_mnist explain` on real test images, colour pictures, other models, and bad input."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from cam_mnist.config import RunConfig
from cam_mnist.core.boxes import boxes_from_maps, tight_boxes
from cam_mnist.data import splits as data
from cam_mnist.maps import explain, segment
from cam_mnist.viz import plotting


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


def test_segment_draws_the_outline_it_promises(tiny_run, test_png, tmp_path, run_cli):
    # `explain --segment`: the segmentation's outline in cyan on the top class's map, and its box in the JSON; the
    # tile equals one drawn here from the library's own segmentation of the library's map.
    path, image = test_png
    result = run_cli("explain", path, "--run-dir", tiny_run, "--segment", "--json", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)[0]
    model = keras.models.load_model(tiny_run / "model.keras")
    x = (image / np.float32(255))[None, ..., None]
    maps = explain(model, x, "cam", int(np.asarray(model(x)).argmax()))
    mask = segment(x, maps)[0]
    assert mask.any() and record["segment_pixels"] == int(mask.sum())
    assert record["segment_box"] == tight_boxes(mask[None])[0].tolist()
    written = np.asarray(Image.open(record["output"]).convert("RGB"))
    tile = plotting.captioned(plotting.overlay(x[0], maps[0], map_box=record["box"], outline=mask), "")
    start = written.shape[1] - tile.shape[1]
    np.testing.assert_array_equal(written[14:, start:], tile[14:])
    assert (written[14:, start:] == plotting.OUTLINE_COLOUR).all(-1).sum() > 0  # the cyan edge is there


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
    from cam_mnist.maps.registry import METHODS

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
    train = run_cli("train", "--help")  # the presets' help quotes percentages, which argparse formats with %
    text = "".join(train.stdout.split())  # argparse wraps lines at spaces and at hyphens ("default-\nv4")
    assert train.returncode == 0 and all(f"{preset}:" in text for preset in PRESETS)
    bench = run_cli("bench", "--help")  # the benchmark's own arguments, handed on
    assert bench.returncode == 0 and "--slow-images" in bench.stdout


def test_methods_command_prints_the_registry_and_the_docs_show_it(run_cli, repo_root):
    # The methods table (docs/methods.md) is the registry's, verbatim: a method added or renamed without it fails.
    from cam_mnist.maps import METHODS as CLASSES
    from cam_mnist.maps.registry import METHODS, methods_table

    result = run_cli("methods")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == methods_table()
    assert methods_table() in (repo_root / "docs" / "methods.md").read_text()
    assert list(CLASSES) == list(METHODS)  # the classes are keyed by the registry's names, in its order
    assert all(CLASSES[name].__name__ == info.cls.split(":")[1] for name, info in METHODS.items())


def test_to_model_input_by_hand():
    from cam_mnist.data.images import to_model_input

    # Grey, light on dark: kept as it is, scaled by 1/255, centred on the canvas at ((8-2)//2, (6-4)//2) = (3, 1).
    grey = np.array([[0, 51, 102, 255], [255, 204, 153, 0]], np.uint8)  # 2 high, 4 wide
    array, notes = to_model_input(Image.fromarray(grey), (8, 6), 1, "canvas", "auto")
    assert array.shape == (8, 6, 1) and notes == ["centred on a 6x8 black canvas"]
    np.testing.assert_allclose(array[3:5, 1:5, 0], grey / 255, atol=1e-7)
    assert array[:3].max() == 0 and array[5:].max() == 0 and array[:, [0, 5]].max() == 0
    # Dark on light (mean above one half): inverted, then centred, so the canvas stays black.
    array, notes = to_model_input(Image.fromarray(np.full((2, 2), 255, np.uint8)), (4, 4), 1, "canvas", "auto")
    assert "inverted (dark on light)" in notes and array.max() == 0  # white paper becomes black
    # RGB for a grey model: ITU-R 601-2 luma, L = (299 R + 587 G + 114 B) / 1000, as PIL converts.
    rgb = np.array([[[200, 100, 50], [0, 0, 255]]], np.uint8)
    array, _ = to_model_input(Image.fromarray(rgb), (1, 2), 1, "resize", "no")
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    luma = (r * 299 + g * 587 + b * 114) / 1000
    np.testing.assert_allclose(array[..., 0] * 255, luma, atol=0.51)
    # Grey for an RGB model: three equal channels; height and width kept apart.
    array, _ = to_model_input(Image.fromarray(grey), (2, 4), 3, "resize", "no")
    assert array.shape == (2, 4, 3)
    for channel in range(3):
        np.testing.assert_allclose(array[..., channel], grey / 255, atol=1e-7)
    # Resize stretches to the model's (H, W): 2x4 -> 4x8
    array, notes = to_model_input(Image.fromarray(grey), (4, 8), 1, "resize", "no")
    assert array.shape == (4, 8, 1) and notes == ["resized 4x2 -> 8x4"]


def test_a_folder_is_explained_into_one_array_and_a_second_run_skips_what_is_there(
    tiny_run, tmp_path, run_cli, data_dir
):
    config = RunConfig.load(tiny_run / "config.json")
    split = data.load_split("test", config.data, data_dir)
    folder = tmp_path / "pictures"
    folder.mkdir()
    n = 150  # more than the pictures drawn by default (100): none are, the maps go to maps_cam.npy
    for i in range(n):
        Image.fromarray(split.images[i]).save(folder / f"digit_{i:04d}.png")
    out = tmp_path / "out"
    result = run_cli("explain", folder, "--run-dir", tiny_run, "--out", out)
    assert result.returncode == 0, result.stderr
    maps = np.load(out / "maps_cam.npy", mmap_mode="r")
    assert maps.shape == (n, 1, 40, 40) and maps.dtype == np.float16 and not list(out.glob("*.png"))
    model = keras.models.load_model(tiny_run / "model.keras")
    x = split.float_images(slice(0, n))
    expected = explain(model, x, "cam", np.asarray(model(x)).argmax(1))
    np.testing.assert_allclose(maps[:, 0], expected, atol=2e-3)  # float16
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(n))

    # A run killed after 100 images: its lines stop there, the last one cut short. The same command redoes only
    # the other 50: the first 100 maps, overwritten here by 0.5, stay as they are.
    (out / "results.jsonl").write_text("\n".join(lines[:100]) + "\n" + lines[100][:20])
    done = np.load(out / "maps_cam.npy", mmap_mode="r+")
    done[:] = 0.5
    done.flush()
    result = run_cli("explain", folder, "--run-dir", tiny_run, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "100 of 150 images already explained" in result.stderr
    again = np.load(out / "maps_cam.npy")
    assert (again[:100] == 0.5).all()
    np.testing.assert_allclose(again[100:, 0], expected[100:], atol=2e-3)
    assert len((out / "results.jsonl").read_text().splitlines()) == n
    # Other settings into the same folder: refused, and nothing in it changed.
    before = (out / "results.jsonl").read_bytes()
    result = run_cli("explain", folder, "--run-dir", tiny_run, "--out", out, "--method", "gradcam")
    assert result.returncode == 2 and "holds an explain run with other settings" in result.stderr
    assert (out / "results.jsonl").read_bytes() == before


def test_a_nested_model_from_the_command_line(test_png, tmp_path, run_cli):
    keras.utils.set_random_seed(0)
    base_in = keras.Input((40, 40, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="block_conv")(base_in)
    base = keras.Model(
        base_in, keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="top_conv")(x), name="base"
    )
    head = [
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10, activation="softmax"),
    ]
    model = keras.Sequential([keras.Input((40, 40, 1)), keras.layers.Rescaling(1.0), base, *head])
    model.save(tmp_path / "nested.keras")
    listed = run_cli("layers", "--model", tmp_path / "nested.keras")
    assert listed.returncode == 0, listed.stderr
    assert "| base/block_conv | Conv2D | 20x20x4 |" in listed.stdout and "| base/top_conv (default) |" in listed.stdout
    path, image = test_png
    for method, layer in (("cam", None), ("gradcam", "base/block_conv")):
        command = ["explain", path, "--model", tmp_path / "nested.keras", "--method", method, "--json"]
        result = run_cli(*command, *(["--layer", layer] if layer else []), "--out", tmp_path / method)
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)[0]
        x = (image / np.float32(255))[None, ..., None]
        top = int(np.asarray(model(x)).argmax())
        assert record["box"] == boxes_from_maps(explain(model, x, method, top, layer=layer))[0].tolist()


def test_smoothing_flags_and_several_layers_from_the_command_line(tiny_run, test_png, tmp_path, run_cli):
    # --eigen-smooth, --aug-smooth and --layer a,b give the library's maps with those options; with --method all,
    # the methods that cannot take an option are skipped, each with a note saying why.
    path, image = test_png
    model = keras.models.load_model(tiny_run / "model.keras")
    x = (image / np.float32(255))[None, ..., None]
    top = int(np.asarray(model(x)).argmax())
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)][-2:]
    cases = [
        (["--eigen-smooth"], {"eigen_smooth": True}),
        (["--aug-smooth"], {"aug_smooth": True}),
        (["--layer", ",".join(convs)], {"layer": convs}),
    ]
    for flags, options in cases:
        out = tmp_path / flags[0].strip("-")
        result = run_cli("explain", path, "--run-dir", tiny_run, "--method", "gradcam", *flags, "--out", out, "--json")
        assert result.returncode == 0, result.stderr
        expected = boxes_from_maps(explain(model, x, "gradcam", top, **options))[0].tolist()
        assert json.loads(result.stdout)[0]["box"] == expected, flags
        written = np.load(out / "maps_gradcam.npy")[0, 0]  # stored in float16: 2^-11 apart at most in [0, 1]
        np.testing.assert_allclose(written, explain(model, x, "gradcam", top, **options)[0], atol=2**-11)
    result = run_cli("explain", path, "--run-dir", tiny_run, "--method", "all", "--eigen-smooth", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "note: guided-backprop is skipped" in result.stderr and "eigen_smooth replaces" in result.stderr
    assert "note: gradcam is skipped" not in result.stderr
