"""Training runs end to end: outputs, exact resume after SIGKILL, corrupt checkpoints, Ctrl-C, config."""

import csv
import dataclasses
import io
import json
import re
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from cam_mnist import config
from cam_mnist.core.errors import UserError
from cam_mnist.reports import evaluate
from cam_mnist.scoring import cam_localization, classification
from cam_mnist.train import checkpoint

VALIDATION_COLUMNS = [
    "step",
    "val_accuracy",
    "val_loss",
    "val_loc_tau",
    "val_tau",
    "val_loc_worst",
    "val_loc_20",
    "val_peak_in_box",
]
LONG_TINY = ["--preset", "tiny", "--steps", "300", "--checkpoint-every", "4", "--heatmap-every", "100", "--quiet"]


def _scored_again(run_dir, data_dir):
    """The run's saved model re-scored here on its test and validation splits: what its files must say."""
    import keras

    run = config.RunConfig.load(run_dir / "config.json")
    model = keras.models.load_model(run_dir / "model.keras")
    predict = lambda x: np.asarray(model(x, training=False))  # noqa: E731
    _, test = evaluate.split_for(run, data_dir)
    val = evaluate.validation_for(run, run.data, data_dir)
    return model, predict, test, val


def test_tiny_run_writes_everything(tiny_run, data_dir):
    names = {p.name for p in tiny_run.iterdir()}
    assert {
        "config.json",
        "train.log",
        "metrics.csv",
        "checkpoints",
        "heatmaps",
        "index.html",
        "model.keras",
        "summary.json",
        "tb",
    } <= names
    steps = [0, 4, 8, 12]
    for i in range(4):  # per image per step, plus the animation
        folder = tiny_run / "heatmaps" / f"img_{i:02d}"
        assert sorted(p.name for p in folder.glob("step_*.png")) == [f"step_{s:07d}.png" for s in steps]
        with Image.open(folder / "evolution.gif") as gif:
            assert gif.n_frames == len(steps)  # one frame per heatmap step
    assert len(list((tiny_run / "heatmaps" / "grid").glob("step_*.png"))) == len(steps)
    with open(tiny_run / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == steps
    summary = json.loads((tiny_run / "summary.json").read_text())
    _, predict, test, _ = _scored_again(tiny_run, data_dir)
    accuracy = (classification.predict_probs(predict, test).argmax(1) == test.labels).mean()
    assert summary["test_accuracy"] == pytest.approx(accuracy, abs=1e-4) and summary["test_images"] == len(test) == 300
    assert (tiny_run.parent / "latest").resolve() == tiny_run.resolve()
    page = (tiny_run / "index.html").read_text()
    assert "CAM of the true class (left) and of the predicted class (right)" in page


class _Links(HTMLParser):
    """Every src and href of a page, and the text of its inlined JSON."""

    def __init__(self):
        super().__init__()
        self.links, self.json, self._in_json = [], "", False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        self._in_json = tag == "script" and attrs.get("type") == "application/json"

    def handle_data(self, data):
        if self._in_json:
            self.json += data

    def handle_endtag(self, tag):
        self._in_json = False


def test_the_viewer_links_only_files_that_exist_and_shows_every_step(tiny_run):
    parser = _Links()
    parser.feed((tiny_run / "index.html").read_text())
    data = json.loads(parser.json)
    steps = [int(r["step"]) for r in csv.DictReader(open(tiny_run / "metrics.csv"))]
    assert data["steps"] == steps
    assert len(data["images"]) == config.RunConfig.load(tiny_run / "config.json").train.panel_size  # a row each
    linked = parser.links + [path for row in data["images"] for path in row]
    assert len(linked) > 4 * len(steps) and all(not p.startswith(("/", "http")) for p in linked)  # relative
    missing = [p for p in linked if not (tiny_run / unquote(p)).is_file()]
    assert not missing
    for i, row in enumerate(data["images"]):  # each step's picture and its caption's numbers, from the records
        for k, step in enumerate(steps):
            assert row[k] == f"heatmaps/img_{i:02d}/step_{step:07d}.png"
            tiles = json.loads((tiny_run / "heatmaps" / "grid" / f"step_{step:07d}.json").read_text())["images"][i]
            assert data["captions"][i][k] == " | ".join(
                f"{t['name']} {t['class']} p={t['p']:.2f} IoU {t['iou']:.2f}" for t in tiles
            )
    assert "validation: accuracy" in data["metrics"][-1]


def test_tensorboard_logs_every_step_and_every_heatmap(tiny_run):
    from cam_mnist.train.summaries import read_events

    events = read_events(tiny_run / "tb")
    rows = list(csv.DictReader(open(tiny_run / "metrics.csv")))
    assert [s for s, _ in events["train/loss"]] == list(range(1, 13))
    assert [s for s, _ in events["train/learning_rate"]] == list(range(1, 13))
    # After update s of the tiny preset (peak 3e-3, 2 warm-up steps, 12 in all): s / 2 x 3e-3 while warming up, then
    # cosine decay over the other 10, to 0 at the last step.
    peak, warm, total = 3e-3, 2, 12
    by_hand = [
        peak * s / warm if s <= warm else peak * 0.5 * (1 + np.cos(np.pi * (s - warm) / (total - warm)))
        for s in range(1, 13)
    ]
    np.testing.assert_allclose([v for _, v in events["train/learning_rate"]], by_hand, rtol=1e-5, atol=1e-9)
    assert by_hand[warm - 1] == peak and by_hand[-1] < 1e-12
    for tag, column in [("val/accuracy", "val_accuracy"), ("val/cam_loc_tau", "val_loc_tau"), ("val/loss", "val_loss")]:
        assert [s for s, _ in events[tag]] == [int(r["step"]) for r in rows]
        np.testing.assert_allclose([v for _, v in events[tag]], [float(r[column]) for r in rows], atol=1e-5)
    for (step, png), row in zip(events["panel"], rows, strict=True):  # the grid picture of the same step
        assert step == int(row["step"])
        grid = np.asarray(Image.open(tiny_run / "heatmaps" / "grid" / f"step_{step:07d}.png").convert("RGB"))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), grid)


def test_every_heatmap_step_scores_localization(tiny_run, data_dir):
    with open(tiny_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:  # every heatmap step, validation images: fractions, and a threshold from the sweep
        for column in VALIDATION_COLUMNS[3:]:
            assert 0 <= float(row[column]) <= 1, (row["step"], column)
    # The last row is the final weights on the validation images: scored again here, the same numbers.
    model, predict, test, val = _scored_again(tiny_run, data_dir)
    tau = cam_localization.validation_threshold(model, val)
    again = cam_localization.cam_localization(model, val, classification.predict_probs(predict, val), tau)
    assert float(rows[-1]["val_tau"]) == pytest.approx(tau)
    for column, key in [("val_loc_tau", "loc_tau"), ("val_loc_20", "loc_20"), ("val_peak_in_box", "peak_in_box"),
                        ("val_loc_worst", "worst_class")]:  # fmt: skip
        assert float(rows[-1][column]) == pytest.approx(again[key], abs=1e-4), column
    # The worst class, scored again one class at a time: the lowest of the classes' own top-1 localizations.
    probs = classification.predict_probs(predict, val)
    per_class = [
        cam_localization.cam_localization(model, val.subset(rows_of), probs[rows_of], tau)["loc_tau"]
        for rows_of in (np.flatnonzero(val.labels.ravel() == c) for c in np.unique(val.labels))
    ]
    assert again["worst_class"] == pytest.approx(min(per_class)) and min(per_class) <= again["loc_tau"]
    assert list(again["per_class"].values()) == pytest.approx(per_class)
    log = (tiny_run / "train.log").read_text()
    assert log.count("val_loc_tau=") == len(rows) and log.count("val_peak_in_box=") == len(rows)
    assert "CAM top-1 localization" in log.splitlines()[-1]  # the final line scores the test split
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["tau_from_val"] == float(rows[-1]["val_tau"])  # the last validation step's threshold
    tested = cam_localization.cam_localization(model, test, classification.predict_probs(predict, test), tau)
    for key, name in [("test_cam_top1_loc_tau", "loc_tau"), ("test_cam_top1_loc_20", "loc_20"),
                      ("test_cam_peak_in_box", "peak_in_box"),
                      ("test_cam_top1_loc_worst_class", "worst_class")]:  # fmt: skip
        assert summary[key] == pytest.approx(tested[name], abs=1e-4), key


def test_panel_draws_the_true_box_and_the_cam_box_with_their_iou(tiny_run, data_dir, tmp_path, monkeypatch):
    import keras
    from PIL import Image

    from cam_mnist.core.boxes import boxes_from_maps, iou
    from cam_mnist.data import splits as data
    from cam_mnist.maps import CAM
    from cam_mnist.viz import panel, plotting

    model = keras.models.load_model(tiny_run / "model.keras")
    split = data.load_split("test", config.RunConfig.load(tiny_run / "config.json").data, data_dir)
    captions = []
    captioned = plotting.captioned
    monkeypatch.setattr(plotting, "captioned", lambda rgb, text: captions.append(text) or captioned(rgb, text))
    panel.Panel.of_split(model, split, 2).draw(7, tau=0.4).save(tmp_path / "heatmaps")

    maps = CAM(model)(split.float_images(slice(0, 2)), split.labels[:2])  # the true class's maps
    boxes = boxes_from_maps(maps, 0.4)
    picture = np.asarray(Image.open(tmp_path / "heatmaps" / "img_00" / "step_0000007.png").convert("RGB"))
    tile = picture[14:, : 2 * split.images.shape[2]]  # the true class's tile, below its caption, at scale 2

    def outline(colour):
        ys, xs = np.nonzero((tile == colour).all(-1))
        return [ys.min() // 2, xs.min() // 2, ys.max() // 2 + 1, xs.max() // 2 + 1]

    assert outline(plotting.MAP_BOX_COLOUR) == boxes[0].tolist()
    assert outline(plotting.BOX_COLOUR) == split.boxes[0].tolist()
    assert f"IoU {iou(boxes, split.boxes[:2])[0]:.2f}" in captions[0]
    assert "above 0.40 of its max" in captions[-1]  # the page's caption names the threshold


def test_saved_model_loads_with_plain_keras(tiny_run):
    import keras

    model = keras.models.load_model(tiny_run / "model.keras")  # no custom objects
    probs = np.asarray(model(np.random.default_rng(0).random((3, 40, 40, 1), np.float32)))
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)


def _weights(path):
    state = checkpoint.load(path)
    return state.model_weights + state.optimizer_variables


def _start(run_dir, data_dir, root):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cam_mnist",
            "train",
            *LONG_TINY,
            "--run-dir",
            str(run_dir),
            "--data-dir",
            str(data_dir),
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_checkpoint(process, run_dir, step, timeout=120):
    deadline = time.time() + timeout
    while not checkpoint.path_for(run_dir, step).exists():
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir, run_cli):
    """The long tiny run, never interrupted: what every stopped and resumed run must end with."""
    whole = tmp_path_factory.mktemp("runs") / "whole"
    assert run_cli("train", *LONG_TINY, "--run-dir", whole, "--data-dir", data_dir).returncode == 0
    return whole


def test_resume_after_sigkill_equals_uninterrupted(uninterrupted, tmp_path, data_dir, run_cli, repo_root):
    whole, killed = uninterrupted, tmp_path / "killed"

    process = _start(killed, data_dir, repo_root)
    _wait_for_checkpoint(process, killed, 8)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    result = run_cli("train", "--run-dir", killed, "--quiet", "--data-dir", data_dir)  # resumes from its config
    assert result.returncode == 0, result.stderr
    assert "resumed from step_" in result.stdout + result.stderr

    for a, b in zip(_weights(checkpoint.path_for(whole, 300)), _weights(checkpoint.path_for(killed, 300)), strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical
    read = lambda p: [[r[k] for k in VALIDATION_COLUMNS] for r in csv.DictReader(open(p / "metrics.csv"))]  # noqa: E731
    assert read(killed) == read(whole)  # no gap, no duplicate, same numbers
    from cam_mnist.train.summaries import read_events

    logged, expected = read_events(killed / "tb"), read_events(whole / "tb")
    assert logged.keys() == expected.keys()
    for tag, values in expected.items():  # TensorBoard's curves: every step once, with the uninterrupted values
        assert [s for s, _ in logged[tag]] == [s for s, _ in values], tag
        if tag.startswith(("train/", "val/")):
            np.testing.assert_allclose([v for _, v in logged[tag]], [v for _, v in values], rtol=1e-6)


def test_ctrl_c_stops_after_a_checkpoint(tmp_path, data_dir, run_cli, repo_root):
    run_dir = tmp_path / "interrupted"
    process = _start(run_dir, data_dir, repo_root)
    _wait_for_checkpoint(process, run_dir, 4)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 75, output  # stopped, resumable
    step = int(output.split("stopped by SIGINT at step ")[1].split(":")[0])
    assert checkpoint.path_for(run_dir, step).exists()
    assert not (run_dir / "summary.json").exists()


def test_corrupt_newest_checkpoint_is_skipped(tiny_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run, run_dir)
    newest = checkpoint.list_checkpoints(run_dir)[-1][1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated, as by a full disk
    warnings = []
    state = checkpoint.latest_valid(run_dir, warn=warnings.append)
    assert state.step == 8 and "step_0000012.npz" in warnings[0] and "unreadable" in warnings[0]


def test_resume_refuses_clashing_flags(tiny_run, run_cli, repo_root):
    result = run_cli("train", "--run-dir", tiny_run, "--batch-size", "64", "--quiet")
    assert result.returncode == 2
    assert "started with other settings (batch_size)" in result.stderr


def test_small_canvas_epochs_train_the_same_network_then_switch_to_the_whole_canvas(
    tiny_run, tmp_path, data_dir, run_cli
):
    # The tiny preset: 16 steps an epoch on a 40x40 canvas; here the first epoch on 32x32, then 8 steps on 40x40.
    run_dir = tmp_path / "small"
    flags = ["--small-canvas", "32", "--small-epochs", "1", "--steps", "24", "--quiet", "--data-dir", data_dir]
    result = run_cli("train", "--preset", "tiny", "--run-dir", run_dir, *flags)
    assert result.returncode == 0, result.stderr
    config = json.loads((run_dir / "config.json").read_text())["data"]
    assert (config["canvas"], config["small_canvas"], config["small_epochs"]) == (40, 32, 1)
    small_step4, plain_step4 = (_weights(checkpoint.path_for(r, 4)) for r in (run_dir, tiny_run))
    assert [w.shape for w in small_step4] == [w.shape for w in plain_step4]  # one network, whatever the canvas
    assert any(not np.array_equal(a, b) for a, b in zip(small_step4, plain_step4, strict=True))  # other images
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 24  # past the switch to the whole canvas, then scored on 40x40 test images
    import keras

    assert keras.saving.load_model(run_dir / "model.keras").input_shape == (None, 40, 40, 1)


def test_only_newest_checkpoints_kept(tmp_path, data_dir, run_cli, repo_root):
    run_dir = tmp_path / "keep"
    result = run_cli(
        "train", "--preset", "tiny", "--keep-checkpoints", "2", "--run-dir", run_dir, "--quiet", "--data-dir", data_dir
    )
    assert result.returncode == 0, result.stderr
    assert [s for s, _ in checkpoint.list_checkpoints(run_dir)] == [8, 12]


def test_config_round_trip_and_overrides(tmp_path):
    parser = __import__("cam_mnist.commands.main", fromlist=["build_parser"]).build_parser()
    args = parser.parse_args(["train", "--preset", "seed", "--steps", "7", "--lr", "0.25"])
    c = config.config_from_args(args)
    assert (c.model.arch, c.train.optimizer, c.train.lr, c.train.steps) == ("lenet", "sgd", 0.25, 7)
    c.save(tmp_path / "config.json")
    assert config.RunConfig.load(tmp_path / "config.json") == c
    args = parser.parse_args(["train", "--preset", "tiny", "--layers", "8x4/2", "16x1", "--no-batch-norm"])
    c = config.config_from_args(args)
    assert (c.model.layers, c.model.batch_norm, c.data.canvas) == (("8x4/2", "16x1"), False, 40)
    with pytest.raises(UserError, match="unknown TrainConfig fields"):
        config.RunConfig.from_dict({"train": {"stepz": 3}})
    with pytest.raises(UserError, match="optimizer must be 'sgd' or 'adam'"):
        config.validate(config.RunConfig.from_dict({"train": {"optimizer": "rmsprop"}}))
    with pytest.raises(UserError, match="--layers is for the 'stack' arch"):
        config.config_from_args(parser.parse_args(["train", "--preset", "seed", "--layers", "8x3"]))
    assert config.ConvSpec.parse("32x2/2t") == config.ConvSpec(32, (2, 2), 2, transposed=True)
    with pytest.raises(UserError, match=r"bad layer '32x2/2pt': write .*\[p\|t\]"):  # pool, then upsample: no
        config.config_from_args(parser.parse_args(["train", "--preset", "tiny", "--layers", "8x4/2", "32x2/2pt"]))


def test_the_defaults_are_the_default_preset():
    # ModelConfig() is the network `make train` trains, so a user building one in Python gets the same model.
    assert config.ModelConfig() == config.preset("default").model
    assert config.RunConfig() == config.preset("default")
    assert config.ModelConfig().layers == config.FINE and config.TrainConfig().cam_gauge == "min"


def test_config_json_of_an_older_version_rebuilds_its_run_or_is_refused(tmp_path):
    # A config.json saved before hide-and-seek, centred CAM weights and bfloat16 existed meant "without them"; one
    # saved with center_logits (today's cam_gauge) gets the gauge it trained with; one saved with retired options at
    # values that had no effect loads; a run that used one is refused, naming the commit.
    old = config.preset("default").to_dict()
    del old["data"]["hide_patch"], old["data"]["hide_epochs"], old["train"]["cam_gauge"], old["model"]["precision"]
    del old["train"]["map_entropy"], old["model"]["local_gate"], old["model"]["gate_stride"], old["model"]["ink_gate"]
    del old["data"]["small_canvas"], old["data"]["small_epochs"], old["train"]["label_smoothing"]
    old["data"] |= {"rotate": 0.0, "rescale": 0.0}
    old["model"] |= {"widths": [24, 48, 64], "pool_first": True, "stem_stride": 2, "quarter_convs": 2}
    old["train"]["weight_decay"] = 0.0
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    loaded = config.RunConfig.load(path)
    assert (loaded.data.hide_patch, loaded.data.hide_epochs, loaded.train.cam_gauge) == (0, 0, "none")
    assert loaded.train.map_entropy == loaded.train.label_smoothing == 0.0  # before these terms were in the loss
    assert loaded.data.small_canvas == loaded.data.small_epochs == 0  # and on the whole canvas throughout
    expected = dataclasses.replace(
        config.preset("default").model, precision="float32", local_gate=False, gate_stride=0, ink_gate=False
    )
    assert loaded.model == expected  # and before the local gate and its forms
    for centred, gauge in ((True, "mean"), (False, "none")):
        path.write_text(json.dumps({**old, "train": {**old["train"], "center_logits": centred}}))
        assert config.RunConfig.load(path).train.cam_gauge == gauge
    for section, field, value in [("data", "rotate", 15.0), ("train", "weight_decay", 1e-4), ("model", "arch", "fast")]:
        path.write_text(json.dumps({**old, section: {**old[section], field: value}}))
        with pytest.raises(UserError, match=rf"made with {section}\.{field}, .* `git checkout e4652dd`"):
            config.RunConfig.load(path)


def test_every_preset_validates_and_builds_a_cam_model():
    # A preset is a dict of overrides that nothing else checks: a typo'd field or an impossible setting would only
    # surface when a user starts a 17-minute (or hour-long) run.
    from cam_mnist.model import FEATURES, LOGITS, PROBS, build_model

    for name in config.PRESETS:
        c = config.preset(name)
        config.validate(c)
        model = build_model(c.model, c.data.canvas)
        assert {FEATURES, LOGITS, PROBS} <= {layer.name for layer in model.layers}, name
        assert model.output.shape == (None, 10), name
        k = model.get_layer(FEATURES).output.shape[-1]  # the CAM weights w_k^c are the (K, 10) logits kernel
        assert model.get_layer(LOGITS).kernel.shape == (k, 10), name
        assert k == (config.ConvSpec.parse(c.model.layers[-1]).width if c.model.arch == "stack" else 64), name
        # Every preset but the reference's own network (whose map is 25x25 too) has a map of stride <= 4.
        assert model.get_layer(FEATURES).output.shape[1:3] == (c.data.canvas // 4,) * 2, name
    # long is the default's network trained on more images of more digits, the test digits never among them;
    # seed and seed-adam are the reference's network, with its optimiser and with ours.
    # The default and our recipe on the reference's network compute their convs in bfloat16; the presets measured
    # in float32 keep float32, and the reference's own recipe is the reference's, in float32.
    default, long = config.preset("default"), config.preset("long")
    assert default.model.precision == config.preset("seed-adam").model.precision == "mixed_bfloat16"
    assert [config.preset(p).model.precision for p in ("long", "seed", "tiny")] == ["float32"] * 3
    ungated = dataclasses.replace(default.model, local_gate=False, ink_gate=False)  # measured before the gate existed
    assert dataclasses.replace(long.model, precision=default.model.precision) == ungated and default.model.local_gate
    assert long.train.steps * long.train.batch_size > default.train.steps * default.train.batch_size
    assert long.data.extra_train_digits > default.data.extra_train_digits == 0
    assert long.train.cam_gauge == default.train.cam_gauge == "min"  # a softmax head: every CAM weight >= 0
    seed, seed_adam = config.preset("seed"), config.preset("seed-adam")
    assert seed.model == dataclasses.replace(seed_adam.model, precision="float32") and seed.model.arch == "lenet"
    assert (seed.train.optimizer, seed_adam.train.optimizer) == ("sgd", default.train.optimizer)
    # default-v3 is the default before progressive resizing and the gate's spread: 7900 steps on the whole canvas.
    v3 = config.preset("default-v3")
    assert v3.model == default.model and default.data.small_canvas > 0 == v3.data.small_canvas
    small = {"small_canvas": default.data.small_canvas, "small_epochs": default.data.small_epochs}
    assert dataclasses.replace(v3.data, **small) == default.data
    assert (v3.train.steps, v3.train.gate_spread, default.train.gate_spread) == (7900, 0, 0.1)
    # default-v6 is the default with 21 of its 23 epochs on 48x48 canvases, not 20; default-v5 with 15 of 19;
    # default-v4 with 6 of 13.5 on 64x64.
    assert small == {"small_canvas": 48, "small_epochs": 20}
    v6, v5, v4 = config.preset("default-v6"), config.preset("default-v5"), config.preset("default-v4")
    schedule = {"steps": 17_968, "heatmap_every": 2246, "checkpoint_every": 2246}
    for old, canvas, epochs, steps in [(v6, 48, 21, 17_968), (v5, 48, 15, 14_840), (v4, 64, 6, 10_560)]:
        assert (old.model, dataclasses.replace(old.data, **small)) == (default.model, default.data)
        assert (old.data.small_canvas, old.data.small_epochs, old.train.steps) == (canvas, epochs, steps)
        assert dataclasses.replace(old.train, **schedule) == default.train
    # two-digits is default-v3's network and recipe with a sigmoid per class, which has no free gauge.
    two = config.preset("two-digits")
    assert dataclasses.replace(two.model, head="softmax") == ungated and two.model.head == "sigmoid"
    same = dataclasses.replace(two.train, cam_gauge=v3.train.cam_gauge, map_entropy=v3.train.map_entropy)
    assert same == v3.train and two.train.cam_gauge == "none" and two.data.digits == 2
    # default-v2 is default-v3 before the local gate; default-v1 that before the map's entropy joined its loss, as
    # long was measured. spread is default-v3 with the gate's spread in its loss.
    v1, v2 = config.preset("default-v1"), config.preset("default-v2")
    assert (v2.data, v2.model, v2.train) == (v3.data, ungated, v3.train)
    assert dataclasses.replace(v1.train, map_entropy=v3.train.map_entropy) == v3.train
    assert (v1.data, v1.model) == (v3.data, ungated)
    assert v1.train.map_entropy == long.train.map_entropy == 0 < v3.train.map_entropy
    spread = config.preset("spread")
    assert (spread.data, spread.model) == (v3.data, v3.model)
    assert dataclasses.replace(spread.train, gate_spread=0.0) == v3.train and spread.train.gate_spread > 0


def test_native_bfloat16_reads_the_cpus_flags(tmp_path):
    # make train notes when the default's bfloat16 convolutions run on a CPU that would emulate them.
    from cam_mnist.core.cpu import native_bfloat16

    cpuinfo = tmp_path / "cpuinfo"
    for text, expected in [
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 fma\n", True),
        ("processor\t: 0\nflags\t\t: fpu avx2 fma\nprocessor\t: 1\nflags\t\t: fpu avx2 fma\n", False),
        ("processor\t: 0\nFeatures\t: fp asimd bf16 sve\n", True),  # Arm
        ("processor\t: 0\nFeatures\t: fp asimd\n", False),
        ("processor\t: 0\n", None),  # no flags listed: unknown
    ]:
        cpuinfo.write_text(text)
        assert native_bfloat16(cpuinfo) is expected, text
    assert native_bfloat16(tmp_path / "absent") is None


def test_the_cam_gauge_changes_the_cam_but_no_prediction(tmp_path, data_dir, run_cli):
    # Softmax sees only differences of logits: taking a per-channel constant out of the CAM weights after every
    # step ('mean': zero mean over classes; 'min': each channel's smallest weight 0) must leave the loss, the
    # predictions and every gradient as they were (up to float rounding), and change only the maps. That is the
    # cross-entropy's property: the map's entropy (the default's --map-entropy) is computed on the map the gauge
    # makes, so these runs train without it.
    import keras

    runs = {}
    for gauge in ("mean", "min", "none"):
        run_dir = tmp_path / gauge
        result = run_cli(
            "train", "--preset", "tiny", "--cam-gauge", gauge, "--map-entropy", "0", "--run-dir", run_dir, "--quiet",
            "--data-dir", data_dir,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        with open(run_dir / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        runs[gauge] = (rows, keras.models.load_model(run_dir / "model.keras"))
    plain_rows, plain = runs["none"]
    w_plain = plain.get_layer("logits").kernel.numpy()
    assert np.abs(w_plain.mean(1)).max() > 1e-3  # without a gauge, a class-shared part remains
    x = np.random.default_rng(0).random((4, 40, 40, 1), np.float32)
    for gauge, shared in (("mean", np.mean), ("min", np.min)):
        rows, model = runs[gauge]
        for a, b in zip(rows, plain_rows, strict=True):
            for key in ("train_loss", "val_loss"):
                if a[key]:
                    assert float(a[key]) == pytest.approx(float(b[key]), abs=2e-4), (gauge, a["step"], key)
        w = model.get_layer("logits").kernel.numpy()
        np.testing.assert_allclose(shared(w, 1), 0, atol=1e-6)  # after every step
        np.testing.assert_allclose(w, w_plain - shared(w_plain, 1, keepdims=True), atol=2e-4)
        np.testing.assert_allclose(model.predict(x, verbose=0), plain.predict(x, verbose=0), atol=2e-4)
    assert (runs["min"][1].get_layer("logits").kernel.numpy() >= 0).all()  # a 'min' map only adds evidence
    with pytest.raises(ValueError, match="cam_gauge needs the softmax head"):
        config.validate(config.RunConfig.from_dict({"model": {"head": "sigmoid"}, "train": {"cam_gauge": "mean"}}))
    with pytest.raises(ValueError, match="cam_gauge must be 'none', 'mean' or 'min', got 'max'"):
        config.validate(config.RunConfig.from_dict({"train": {"cam_gauge": "max"}}))


@pytest.mark.parametrize(
    "layers, aligned",
    [
        (("4x4/2", "4x4/2", "4x3", "4x1"), True),  # even kernels at stride 2: each cell centred on its pixels
        (("4x5/2", "4x3/2", "4x3", "4x1"), False),  # odd ones: TensorFlow pads less before than after
        (("4x4/2", "4x4/2", "4x3", "4x2/2t"), True),  # a transposed 2x2 conv splits each cell into 2x2 finer ones
    ],
)
def test_stack_map_cells_sit_where_the_cam_upsampling_puts_them(layers, aligned):
    # CAM upsampling (bilinear, half-pixel centres) puts cell j of a stride-s map at pixel s*j + (s - 1)/2: 4j + 1.5
    # at stride 4. A cell's receptive field is centred there only if every strided conv pads evenly; with odd kernels
    # the map lands over a pixel up and left of the digit (on a trained model: 1.9 and 1.6 pixels,
    # docs/experiments.md).
    import keras

    from cam_mnist.model import FEATURES, build_model

    # The stack alone: the local gate reads each cell's own pixels (test_local_gate_reads_only_its_cells_own_pixels...)
    model_config = config.RunConfig.from_dict(
        {"model": {"arch": "stack", "layers": layers, "batch_norm": False, "local_gate": False}}
    )
    model = build_model(model_config.model, 40)
    for layer in model.layers:  # every weight positive and equal: a cell answers to all of its receptive field
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            layer.kernel.assign(np.ones(layer.kernel.shape, np.float32))
            layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
    features = keras.Model(model.input, model.get_layer(FEATURES).output)
    image = np.zeros((1, 40, 40, 1), np.float32)
    image[0, 16:20, 12:16] = 1  # a 4x4 block (one stride period, so no cell is favoured): centre (17.5, 13.5)
    response = np.asarray(features(image))[0].sum(-1)  # (10, 10), or (20, 20) after the transposed conv
    stride = 40 // response.shape[0]
    cells = np.indices(response.shape) * stride + (stride - 1) / 2  # each cell's pixel position as upsampling puts it
    centre = (cells * response).sum((1, 2)) / response.sum()
    if aligned:
        np.testing.assert_allclose(centre, [17.5, 13.5], atol=1e-4)
    else:
        assert (centre < np.array([17.5, 13.5]) - 1).all(), centre


@pytest.mark.parametrize("gate_stride", [0, 2])
def test_local_gate_reads_only_its_cells_own_pixels_and_multiplies_the_cam_layer(gate_stride):
    # The gate of map cell (i, j) sees the stride x stride pixels the cell sits on and nothing else: changing one
    # pixel changes the gate of its own cell only, while the stack's receptive field (wider) changes its neighbours
    # too; the CAM layer is the stack's ReLU times the gate, channel by channel. With gate_stride 2 on a stride-4
    # stack each stack cell is copied onto 2x2 finer cells, each gated by its own 2x2 pixels.
    import keras

    from cam_mnist.model import FEATURES, build_model

    layers = {"layers": ["4x4/2", "4x3", "4x4/2"], "local_gate": True, "gate_stride": gate_stride}
    run = config.RunConfig.from_dict({"model": layers})
    config.validate(run)
    model = build_model(run.model, 40)
    parts = keras.Model(model.input, [model.get_layer(n).output for n in ("gate", "relu3", FEATURES)])
    rng = np.random.default_rng(0)
    image = rng.random((1, 40, 40, 1)).astype(np.float32)
    changed = image.copy()
    changed[0, 4 * 3 + 2, 4 * 5 + 1] += 1.0  # a pixel of cell (3, 5) at stride 4, of cell (7, 10) at stride 2
    (gate, context, cam), (gate2, context2, _) = (
        [np.asarray(keras.ops.cast(a, "float32"))[0] for a in parts(x)] for x in (image, changed)
    )
    stride = gate_stride or 4
    assert gate.shape[:2] == cam.shape[:2] == (40 // stride, 40 // stride)
    moved = np.abs(gate2 - gate).max(-1) > 0
    assert moved[(4 * 3 + 2) // stride, (4 * 5 + 1) // stride] and moved.sum() == 1, np.argwhere(moved)
    assert (np.abs(context2 - context).max(-1) > 0).sum() > 1  # the stack sees beyond its cell
    copied = np.repeat(np.repeat(context, 4 // stride, 0), 4 // stride, 1)  # each stack cell on its finer cells
    np.testing.assert_allclose(cam, copied * gate, rtol=2e-2, atol=1e-3)  # bfloat16 product
    assert ((gate > 0) & (gate < 1)).all()


def test_the_ink_gate_closes_exactly_the_cells_whose_own_pixels_are_blank():
    # A stroke 3 px wide inside one column of 4-px cells: the stack's receptive field sees it from the columns
    # beside it too, but their own pixels are blank, so the ink gate (tanh(ReLU(conv)), no bias) is exactly 0 there
    # and so is the CAM layer; on the stroke's cells it is open for some channels and below 1 for all.
    import keras

    from cam_mnist.model import FEATURES, build_model

    layers = {"layers": ["4x4/2", "4x3", "4x4/2"], "local_gate": True, "ink_gate": True}
    run = config.RunConfig.from_dict({"model": layers, "train": config.NO_SPREAD})  # no spread: no sigmoid gate
    config.validate(run)
    keras.utils.set_random_seed(0)
    model = build_model(run.model, 40)
    parts = keras.Model(model.input, [model.get_layer(n).output for n in ("gate", "relu3", FEATURES)])
    image = np.zeros((1, 40, 40, 1), np.float32)
    image[0, 12:28, 17:20] = 1.0  # rows of cells 3-6, inside cell column 4 (pixels 16-19)
    gate, context, cam = (np.asarray(keras.ops.cast(a, "float32"))[0] for a in parts(image))
    inked = np.zeros((10, 10), bool)
    inked[3:7, 4] = True
    np.testing.assert_array_equal(gate[~inked], 0.0)
    np.testing.assert_array_equal(cam[~inked], 0.0)
    assert (context[3:7, 3].max(-1) > 0).all() and (context[3:7, 5].max(-1) > 0).all()  # the stack sees it there
    assert (gate[inked].max(-1) > 0).all() and (gate < 1).all()


@pytest.mark.parametrize(
    "model, message",
    [
        ({"gate_stride": 3}, "gate_stride 3 needs --local-gate and must divide the stack's map stride (4 pixels)"),
        ({"gate_stride": 2, "local_gate": False}, "gate_stride 2 needs --local-gate"),
        ({"gate_stride": -1}, "gate_stride must be >= 0"),
    ],
)
def test_a_gate_stride_that_cannot_split_the_map_is_refused_by_name(model, message):
    with pytest.raises(UserError, match=re.escape(message)):
        config.validate(config.RunConfig.from_dict({"model": model, "train": config.NO_SPREAD}))


def test_picture_puts_each_panel_image_at_each_step_in_a_grid(tiny_run, tmp_path, run_cli):
    # The README's picture: rows are panel images, columns steps (default: the first after 0, a middle one, the
    # last), each tile the step PNG the run wrote, under a caption naming both.
    from PIL import Image

    out = tmp_path / "picture.png"
    result = run_cli("picture", "--run-dir", tiny_run, "--images", "0", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    picture = np.asarray(Image.open(out).convert("RGB"))
    read = lambda i, s: np.asarray(Image.open(tiny_run / "heatmaps" / f"img_{i:02d}" / f"step_{s:07d}.png"))  # noqa: E731
    h, w = read(0, 4).shape[:2]
    h += 14  # the caption strip
    assert picture.shape[:2] == (2 * h + 4, 3 * w + 2 * 4)  # 2 images x steps 4, 8, 12 (tiny: 12 steps, every 4)
    for r, i in enumerate((0, 2)):
        for c, s in enumerate((4, 8, 12)):
            tile = picture[r * (h + 4) + 14 : r * (h + 4) + h, c * (w + 4) : c * (w + 4) + w]
            np.testing.assert_array_equal(tile, read(i, s)[..., :3], err_msg=f"image {i}, step {s}")
    result = run_cli("picture", "--run-dir", tiny_run, "--steps", "5", "--out", out)
    assert result.returncode == 2 and "no heatmap at step 5; the run drew steps 0, 4, 8, 12" in result.stderr


def test_the_viewer_screenshot_script_draws_the_page_where_chromium_is_installed(tiny_run, tmp_path, repo_root):
    png = tmp_path / "viewer.png"
    command = [sys.executable, "scripts/screenshot_viewer.py", tiny_run / "index.html", png, "--size", "800,600"]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=180)
    if result.returncode == 2 and "no Chromium found" in result.stderr:
        pytest.skip("Chromium is not installed here (Debian package 'chromium'): " + result.stderr.strip())
    assert result.returncode == 0, result.stderr
    shot = np.asarray(Image.open(png).convert("RGB"))
    assert shot.shape == (600, 800, 3) and shot.std() > 10  # a page with pictures, not a blank one


_FAKE_DOM = """
const elements = {};
const element = (id) => (elements[id] = elements[id] || {id, src: "", textContent: "", value: "0"});
globalThis.document = {getElementById: element};
globalThis.setInterval = () => 1; globalThis.clearInterval = () => {};
element("slider").value = process.argv[2];
"""


def test_the_viewer_slider_shows_each_steps_pictures_and_captions(tiny_run, tmp_path):
    """The page's own script, run by Node.js against a stand-in for the DOM: moving the slider to a step puts that
    step's picture and caption in every row."""
    import shutil

    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("Node.js is not installed here: the viewer's script cannot be run outside a browser")
    parser = _Links()
    page = (tiny_run / "index.html").read_text()
    parser.feed(page)
    data = json.loads(parser.json)
    script = page.split("<script>")[-1].split("</script>")[0]
    harness = tmp_path / "viewer.js"
    harness.write_text(
        "const json = " + json.dumps(parser.json) + ";\n" + _FAKE_DOM
        + "element('data').textContent = json;\n" + script
        + "\nelement('slider').value = process.argv[3]; element('slider').oninput();\n"
        + "console.log(JSON.stringify(Object.values(elements).map(e => [e.id, e.src, e.textContent])));"
    )  # fmt: skip
    for start, moved in [(len(data["steps"]) - 1, 1), (0, 2)]:
        result = subprocess.run([node, harness, str(start), str(moved)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        shown = {e[0]: e for e in json.loads(result.stdout)}
        for i, (paths, captions) in enumerate(zip(data["images"], data["captions"], strict=True)):
            assert shown[f"img{i}"][1] == paths[moved] and shown[f"cap{i}"][2] == captions[moved]
        assert shown["step"][2] == f"step {data['steps'][moved]} ({moved + 1} of {len(data['steps'])})"
        assert shown["metrics"][2] == data["metrics"][moved]


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_training_learns_one_batch(data_dir, precision):
    # The training step overfits one batch of 32 in 60 updates: the loss falls below a fifth of where it began and
    # the batch is classified right. A flipped gradient sign, a loss on the wrong targets or an optimizer that never
    # applies its update would not. In both precisions (the default's is bfloat16). After 40 updates an Intel Xeon's
    # float32 kernels classified 28 of the 32 (an AMD EPYC's at least 29).
    from cam_mnist.data.splits import training_data
    from cam_mnist.train.trainer import Trainer

    run = config.preset("tiny")
    run.model.precision = precision
    run.train.schedule, run.train.lr, run.train.steps, run.train.warmup_steps = "constant", 0.05, 60, 0
    trainer = Trainer(run, data_dir / "unused-run", training_data(run, data_dir), log=lambda m: None)
    images, labels = trainer.batch(0)
    losses = [float(trainer._train_step(images, labels, np.float32(0))[0]) for _ in range(60)]
    x = images[..., None].astype(np.float32) / 255
    predicted = np.asarray(trainer.model(x, training=True)).argmax(1)  # as the steps saw it: batch statistics
    assert losses[-1] < losses[0] / 5, losses
    assert (predicted == labels).mean() >= 0.9


def test_sigterm_stops_after_a_checkpoint_and_resumes_exactly(uninterrupted, tmp_path, data_dir, run_cli, repo_root):
    # What docker stop, Kubernetes and Slurm's preemption send: the run finishes its step, writes a checkpoint, says
    # so and exits with 75 ("stopped, resumable"); the same command then ends with the uninterrupted run's weights.
    whole, stopped = uninterrupted, tmp_path / "stopped"
    process = _start(stopped, data_dir, repo_root)
    _wait_for_checkpoint(process, stopped, 8)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 75, output
    step = int(output.split("stopped by SIGTERM at step ")[1].split(":")[0])
    assert checkpoint.path_for(stopped, step).exists() and not (stopped / "summary.json").exists()
    result = run_cli("train", "--run-dir", stopped, "--quiet", "--data-dir", data_dir)
    assert result.returncode == 0, result.stderr
    for a, b in zip(
        _weights(checkpoint.path_for(whole, 300)), _weights(checkpoint.path_for(stopped, 300)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_a_second_signal_aborts_as_the_signal_would():
    import os

    from cam_mnist.train.trainer import _StopFlag

    before = signal.getsignal(signal.SIGTERM)
    flag = _StopFlag()
    try:
        assert signal.getsignal(signal.SIGTERM) == flag._handle and not flag.stop
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert flag.stop and flag.signal == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == before  # the next one does what it did before: ends the process
    finally:
        flag.restore()


def test_cam_entropy_is_the_entropy_of_the_true_class_map():
    # Worked by hand: image 0's class-0 map is flat on 4 of its 6 cells (entropy log 4), image 1's class-2 map lights
    # one cell (entropy 0) once the ReLU clips the cell where a negative weight wins. The batch mean: log(4) / 2.
    import tensorflow as tf

    from cam_mnist.train.map_terms import cam_entropy

    features = np.zeros((2, 2, 3, 2), np.float32)
    features[0, :, :2, 0] = 3.0  # image 0: channel 0 on a 2 x 2 block
    features[1, 0, 0, 0] = 1.0  # image 1: channel 0 on one cell, channel 1 on another
    features[1, 1, 2, 1] = 5.0
    kernel = np.array([[0.5, 0.0, 2.0], [0.0, 1.0, -1.0]], np.float32)  # (K=2, C=3): class 2 weighs channel 1 < 0
    labels = np.array([0, 2])
    got = float(cam_entropy(tf.constant(features), tf.constant(kernel), tf.constant(labels)))
    assert got == pytest.approx(np.log(4) / 2, abs=1e-6)
    # The same from numpy, on random maps: -sum p log p of each ReLU'd true-class map, averaged.
    rng = np.random.default_rng(0)
    features, kernel, labels = rng.random((4, 5, 5, 3), np.float32), rng.normal(size=(3, 10)), rng.integers(0, 10, 4)
    maps = np.maximum(np.einsum("bhwk,kb->bhw", features, kernel[:, labels]), 0).reshape(4, -1)
    p = maps / maps.sum(1, keepdims=True)
    expected = np.mean([-(q[q > 0] * np.log(q[q > 0])).sum() for q in p])
    assert float(cam_entropy(features, kernel.astype(np.float32), labels)) == pytest.approx(expected, rel=1e-5)


def test_the_map_terms_sharpen_what_they_train(data_dir):
    # One batch, 30 steps from the same initial weights, with and without each term: the entropy term's run ends with
    # lower entropy true-class maps, the gate spread's with gates open on fewer cells, which is what each is for.
    import keras

    from cam_mnist.data.splits import training_data
    from cam_mnist.model import FEATURES, GATE
    from cam_mnist.train.map_terms import cam_entropy, gate_spread
    from cam_mnist.train.trainer import Trainer

    entropies, spreads = {}, {}
    for terms in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]:
        run = config.preset("tiny")
        run.train.schedule, run.train.lr, run.train.steps, run.train.warmup_steps = "constant", 0.02, 30, 0
        run.train.map_entropy, run.train.gate_spread = terms
        trainer = Trainer(run, data_dir / "unused-run", training_data(run, data_dir), log=lambda m: None)
        images, labels = trainer.batch(0)
        for _ in range(30):
            trainer._train_step(images, labels, np.float32(0))
        read = keras.Model(trainer.model.input, [trainer.model.get_layer(n).output for n in (FEATURES, GATE)])
        features, gates = read(images[..., None].astype(np.float32) / 255)
        entropies[terms] = float(cam_entropy(features, trainer.model.get_layer("logits").kernel, labels))
        spreads[terms] = float(np.mean(gate_spread(gates)))
    assert entropies[1.0, 0.0] < entropies[0.0, 0.0] - 0.2, entropies
    assert spreads[0.0, 1.0] < spreads[0.0, 0.0] - 0.1, spreads


def test_label_smoothing_is_the_cross_entropy_with_smoothed_targets(data_dir):
    # From numpy: -sum_c q_c log softmax(y)_c with q = (1 - e) one_hot + e / classes; e = 0 is the plain loss.
    from cam_mnist.data.splits import training_data
    from cam_mnist.train.trainer import Trainer

    logits = np.random.default_rng(0).normal(size=(5, 10)).astype(np.float32) * 3
    labels = np.array([0, 3, 9, 3, 7], np.int32)
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    data = training_data(config.preset("tiny"), data_dir)  # the smoothing changes the loss, not the data
    for e in [0.0, 0.1, 0.3]:
        run = config.preset("tiny")
        run.train.label_smoothing = e
        trainer = Trainer(run, data_dir / "unused-run", data, log=lambda m: None)
        q = (1 - e) * np.eye(10)[labels] + e / 10
        np.testing.assert_allclose(trainer._loss()(labels, logits), -(q * log_p).sum(1), rtol=1e-5)


def test_gate_spread_is_each_channels_mean_gate_over_its_largest():
    # From numpy, on random gates; a gate open alike on every cell spreads 1 however far it is open.
    from cam_mnist.train.map_terms import gate_spread

    gates = np.random.default_rng(0).random((3, 4, 5, 2), np.float32)
    expected = (gates.mean(axis=(1, 2)) / gates.max(axis=(1, 2))).mean(axis=1)
    np.testing.assert_allclose(gate_spread(gates), expected, rtol=1e-6)
    np.testing.assert_allclose(gate_spread(np.full((2, 3, 3, 4), 0.3, np.float32)), 1.0, rtol=1e-6)


def test_map_entropy_is_refused_where_there_is_no_one_true_map():
    for section, field, value in [("data", "digits", 2), ("model", "head", "sigmoid")]:  # on a canvas for two
        run = config.preset("tiny")
        run.data.canvas = 60
        run.train.map_entropy = 0.1
        run.train.cam_gauge = "none"
        setattr(getattr(run, section), field, value)
        with pytest.raises(UserError, match=r"map_entropy \(0.1\) needs one digit .* add --map-entropy 0"):
            config.validate(run)
    run = config.preset("tiny")
    run.train.map_entropy = -1.0
    with pytest.raises(UserError, match="map_entropy must be >= 0"):
        config.validate(run)
    for e in [-0.1, 1.0]:
        run = config.preset("tiny")
        run.train.label_smoothing = e
        with pytest.raises(UserError, match=r"label_smoothing must be in \[0, 1\), got"):
            config.validate(run)
    run = config.preset("tiny")
    run.train.gate_spread, run.model.ink_gate = 0.1, True
    with pytest.raises(UserError, match=r"gate_spread \(0.1\) acts on the sigmoid local gate"):
        config.validate(run)
