"""`python -m cam_mnist eval`: per-step accuracy, idempotence, --force, robustness, and bad input."""

import shutil

import numpy as np
import pytest

from cam_mnist import config
from cam_mnist import model as models
from cam_mnist.config import load_run
from cam_mnist.core import boxes as bx
from cam_mnist.reports import evaluate
from cam_mnist.scoring import classification
from cam_mnist.train import checkpoint


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the tiny run, so a test may evaluate or damage it."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_eval_twice_same_csv(run_copy, run_cli, data_dir):
    first = run_cli("eval", "--run-dir", run_copy, "--quiet", "--data-dir", data_dir)
    assert first.returncode == 0, first.stderr
    csv = run_copy / "eval" / "accuracy_per_step.csv"
    before = csv.read_bytes()
    assert "evaluated 3 checkpoint(s)" in first.stdout
    second = run_cli("eval", "--run-dir", run_copy, "--quiet", "--no-robustness", "--data-dir", data_dir)
    assert "evaluated 1 checkpoint(s)" in second.stdout  # only the newest, re-scored for its confusion matrix
    assert csv.read_bytes() == before
    forced = run_cli("eval", "--run-dir", run_copy, "--quiet", "--force", "--no-robustness", "--data-dir", data_dir)
    assert "evaluated 3 checkpoint(s)" in forced.stdout and csv.read_bytes() == before
    from PIL import Image

    for name in ("accuracy_per_step.png", "confusion-accuracy_per_step.png"):
        with Image.open(run_copy / "eval" / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 100, name
    final = (run_copy / "eval" / "final.md").read_text()
    assert "| run | preset | steps |" in final and "| 12 |" in final  # the newest step of the tiny run
    assert [
        line.split("|")[1].strip() for line in (run_copy / "eval" / "robustness.md").read_text().splitlines()[2:]
    ] == ["0", "4", "8", "16"]


def test_rows_match_training_metrics(run_copy, data_dir):
    rows, final = evaluate.evaluate_run(run_copy, data_dir, progress=False)
    assert sorted(rows) == [4, 8, 12] and final["step"] == 12
    assert final["confusion"].sum() == config.RunConfig.load(run_copy / "config.json").data.test_size == 300
    import json

    summary = json.loads((run_copy / "summary.json").read_text())
    assert float(rows[12]["test_accuracy"]) == pytest.approx(summary["test_accuracy"], abs=1e-5)
    per_class = np.array([float(rows[12][f"acc_class_{c}"]) for c in range(10)])
    support = final["confusion"].sum(1)
    assert (per_class * support).sum() / support.sum() == pytest.approx(final["accuracy"], abs=1e-4)


def test_other_clutter_gets_its_own_csv(run_copy, data_dir):
    _, final = evaluate.evaluate_run(run_copy, data_dir, progress=False, distractors=0)
    assert final["csv"].name == "accuracy_per_step-clutter-c40-d0x8-k1-s0.csv"


def test_no_checkpoints(tmp_path, tiny_run, run_cli, data_dir):
    run = tmp_path / "empty"
    run.mkdir()
    shutil.copy(tiny_run / "config.json", run / "config.json")
    result = run_cli("eval", "--run-dir", run, "--data-dir", data_dir)
    assert result.returncode == 2
    assert "no checkpoints in" in result.stderr and "train --run-dir" in result.stderr
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # nothing written


def test_not_a_run(tmp_path, run_cli):
    result = run_cli("eval", "--run-dir", tmp_path / "nowhere")
    assert result.returncode == 2 and "no such run folder" in result.stderr


def test_checkpoint_from_another_architecture(run_copy, run_cli, data_dir):
    before = _snapshot(run_copy)
    config = (run_copy / "config.json").read_text().replace('"8x1"', '"6x1"')  # another width of the CAM layer
    (run_copy / "config.json").write_text(config)
    result = run_cli("eval", "--run-dir", run_copy, "--data-dir", data_dir)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "written by another architecture" in errors[0]
    after = _snapshot(run_copy)
    del (
        before[next(k for k in before if k.name == "config.json")],
        after[next(k for k in after if k.name == "config.json")],
    )
    assert after == before


def test_missing_data_names_make_data(run_copy, run_cli, tmp_path):
    result = run_cli("eval", "--run-dir", run_copy, "--data-dir", tmp_path / "no-data")
    assert result.returncode == 2
    assert "no MNIST file; run `make data`" in result.stderr
    assert not (run_copy / "eval").exists()


def test_corrupt_checkpoint_skipped_not_fatal(run_copy, data_dir):
    path = checkpoint.path_for(run_copy, 8)
    path.write_bytes(path.read_bytes()[:100])
    messages = []
    rows, _ = evaluate.evaluate_run(run_copy, data_dir, progress=False, log=messages.append)
    assert sorted(rows) == [4, 12] and "step_0000008.npz" in messages[0]


def test_every_scores_every_nth_checkpoint_and_the_newest(run_copy, data_dir, run_cli):
    rows, final = evaluate.evaluate_run(run_copy, data_dir, progress=False, every=2)
    assert sorted(rows) == [4, 12] and final["step"] == 12
    bad = run_cli("eval", "--run-dir", run_copy, "--every", "0", "--data-dir", data_dir)
    assert bad.returncode == 2 and "--every must be at least 1" in bad.stderr


def test_two_runs_draw_one_comparison_plot(run_copy, tmp_path, run_cli, data_dir):
    # Two runs: each gets its own eval/ files, and out/comparison.png (relative to the working directory) plots both.
    other = shutil.copytree(run_copy, tmp_path / "other")
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli(
        "eval", "--run-dir", run_copy, "--run-dir", other, "--quiet", "--no-robustness", "--data-dir", data_dir,
        cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "comparison plot -> out/comparison.png" in result.stdout
    assert (work / "out" / "comparison.png").stat().st_size > 0
    for run in (run_copy, other):
        assert (run / "eval" / "accuracy_per_step.csv").exists()
    # Both rows of the final table name their own run with the same (copied) accuracy.
    rows = result.stdout.split("final:\n")[1].splitlines()[2:4]
    assert [row.split("|")[1].strip() for row in rows] == ["run", "other"]
    assert rows[0].split("|")[-2] == rows[1].split("|")[-2]


def test_frontier_plots_each_runs_localization_and_lists_its_newest_row(run_copy, tmp_path, run_cli):
    # `frontier` reads each run's metrics.csv: its CSV repeats every run's newest validation row, with the minutes
    # of training that row was reached at, and the plot has a line per run.
    import csv

    other = shutil.copytree(run_copy, tmp_path / "other")
    older = shutil.copytree(run_copy, tmp_path / "older")  # a run made before the worst-class column existed
    header, *lines = (older / "metrics.csv").read_text().splitlines()
    drop = header.split(",").index("val_loc_worst")
    cut = lambda line: ",".join(v for i, v in enumerate(line.split(",")) if i != drop)  # noqa: E731
    (older / "metrics.csv").write_text("\n".join(map(cut, [header, *lines])) + "\n")
    out = tmp_path / "docs" / "frontier.png"
    result = run_cli("frontier", "--run-dir", run_copy, "--run-dir", other, "--run-dir", older, "--out", out)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0
    with open(run_copy / "metrics.csv") as f:
        newest = list(csv.DictReader(f))[-1]
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["run", "other", "older"]
    assert rows[2]["val_loc_worst"] == "" and rows[0]["val_loc_worst"] == newest["val_loc_worst"]
    for row in rows:
        assert row["design"] == "4x4/2 4x3 8x4/2 8x3x1 8x1 + gate + entropy 0.01"  # tiny: layers, gate, term
        assert row["step"] == newest["step"] and row["val_loc_tau"] == newest["val_loc_tau"]
        assert float(row["minutes"]) == pytest.approx(float(newest["elapsed_s"]) / 60, abs=0.05)
        assert (row["val_loc_20"], row["val_peak_in_box"]) == (newest["val_loc_20"], newest["val_peak_in_box"])


@pytest.mark.parametrize(
    "model, train, expected",
    [
        ({"local_gate": False}, {"map_entropy": 0.0}, "24x4/2 24x3 48x4/2 64x3x1 64x1"),
        ({}, {}, "24x4/2 24x3 48x4/2 64x3x1 64x1 + gate + entropy 0.01"),
        ({"ink_gate": True}, {}, "24x4/2 24x3 48x4/2 64x3x1 64x1 + ink gate + entropy 0.01"),
        ({}, {"gate_spread": 0.1}, "24x4/2 24x3 48x4/2 64x3x1 64x1 + gate + entropy 0.01 + gate spread 0.1"),
        ({}, {"label_smoothing": 0.1}, "24x4/2 24x3 48x4/2 64x3x1 64x1 + gate + entropy 0.01 + label smoothing 0.1"),
        ({"gate_stride": 2}, {"map_entropy": 0.03}, "24x4/2 24x3 48x4/2 64x3x1 64x1 + gate every 2 px + entropy 0.03"),
        ({"arch": "lenet", "layers": [], "local_gate": False, "ink_gate": True}, {}, "lenet + entropy 0.01"),
    ],
)
def test_the_frontier_names_each_runs_design_in_one_line(model, train, expected):
    from cam_mnist.commands.frontier import design

    v3 = {"data": config.WHOLE_CANVAS, "model": model, "train": {**config.NO_SPREAD, **train}}  # default-v3's terms
    assert design(config.RunConfig.from_dict(v3)) == expected


def test_the_frontier_names_the_small_canvas_of_a_runs_first_epochs():
    from cam_mnist.commands.frontier import design

    expected = "24x4/2 24x3 48x4/2 64x3x1 64x1 + gate + entropy 0.01 + gate spread 0.1 + 20 epochs at 48 px"
    assert design(config.preset("default")) == expected
    small = config.RunConfig.from_dict({"data": {"small_canvas": 64, "small_epochs": 4}})
    assert design(small).endswith(" + 4 epochs at 64 px")


def test_frontier_refuses_a_run_without_localization_rows(run_copy, tmp_path, run_cli):
    metrics = run_copy / "metrics.csv"
    header, *rows = metrics.read_text().splitlines()
    columns = header.split(",")
    keep = [i for i, c in enumerate(columns) if not c.startswith(("val_loc", "val_tau", "val_peak"))]
    metrics.write_text("\n".join(",".join(line.split(",")[i] for i in keep) for line in [header, *rows]) + "\n")
    result = run_cli("frontier", "--run-dir", run_copy, "--out", tmp_path / "f.png")
    assert result.returncode != 0
    assert "metrics.csv has no localization rows" in result.stderr
    assert not (tmp_path / "f.png").exists()


def test_localize_scores_every_method_on_a_tiny_run(run_copy, data_dir, run_cli):
    # The README's localization table comes from this function: every registered method, then the ceiling rows on
    # the model's own grid and the baselines, and each number the library's metric of the library's maps.
    import json

    from cam_mnist.maps import explain
    from cam_mnist.maps.registry import METHODS
    from cam_mnist.reports.localize import BASELINES, localize
    from cam_mnist.scoring import localization

    record = localize(
        run_copy, data_dir, images=64, slow_images=16, faithful_images=8, examples=2, sanity_images=16,
        sanity_slow_images=4, log=lambda m: 0,
    )  # fmt: skip
    rows = {r["method"]: r for r in record["methods"]}
    fast = [m for m in METHODS if not METHODS[m].slow]
    assert list(rows) == [
        *METHODS,
        *(f"{m} + segmentation" for m in fast),  # the segmentation each fast method's maps seed
        "ceiling: ideal 10x10 map",  # the tiny preset's 40-px canvas at stride 4
        "ceiling: ideal 10x10 map, blurred 2 px",
        "baseline: centre",
        "baseline: full",
        "baseline: random",
    ]
    assert [rows[m]["images"] for m in METHODS] == [16 if METHODS[m].slow else 64 for m in METHODS]

    config = load_run(run_copy)
    model, predict = models.build_for(config)
    model.set_weights(checkpoint.latest_valid(run_copy).model_weights)
    settings, split = evaluate.split_for(config, data_dir)
    val = evaluate.validation_for(config, settings, data_dir)
    cal = localization.calibrate(explain(model, val.float_images(), "cam", val.labels), val.boxes)
    correct = classification.predict_probs(predict, split, 64).argmax(1) == split.labels[:64]
    maps = explain(model, split.float_images(slice(0, 64)), "cam", split.labels[:64])
    expected = localization.box_metrics(maps, correct, split.boxes[:64], calibrated=cal["tau"], v2=cal["v2"])
    assert rows["cam"]["calibrated_threshold"] == cal["tau"]
    assert [rows["cam"][f"maxboxacc_v2_tau_{d}"] for d in (30, 50, 70)] == [cal["v2"][d] for d in (0.3, 0.5, 0.7)]
    for key in ("top1_loc", "gt_known_loc", "top1_loc_calibrated", "maxboxacc_v2", "maxboxacc_v2_50", "peak_in_box"):
        assert rows["cam"][key] == pytest.approx(expected[key]), key
    assert record["test_accuracy"] == pytest.approx(correct.mean())
    # A map of the whole canvas boxes the whole 40x40 canvas, never a digit's box at IoU 0.5; the random map is the
    # baseline of faithfulness.
    assert rows["baseline: full"]["top1_loc"] == 0.0 and rows["baseline: full"]["gt_known_loc"] == 0.0
    assert [k for k in BASELINES if "deletion_auc" in rows[f"baseline: {k}"]] == ["random"]
    # Twins are scored once: Grad-CAM is CAM on this conv -> GAP -> linear model; guided backpropagation is not.
    assert rows["gradcam"]["same_maps_as"] == "cam" and "same_maps_as" not in rows["guided-backprop"]
    assert {k: v for k, v in rows["gradcam"].items() if k not in ("method", "same_maps_as", "seconds")} == {
        k: v for k, v in rows["cam"].items() if k not in ("method", "seconds")
    }

    written = json.loads((run_copy / "eval" / "localization.json").read_text())
    assert written["methods"] == json.loads(json.dumps(record["methods"]))
    assert (run_copy / "eval" / "localization.md").read_text().strip() == record["table"]
    first_table = record["table"].split("\n\n")[1]
    assert first_table.startswith("| method") and first_table.count("\n| ") == len(rows)  # a row per method
    # per digit class: each class's share of its own images, from the rows' per-image boxes
    labels = split.labels[:64]
    hit = localization.box_ious_by_threshold(maps, split.boxes[:64], [cal["tau"]])[cal["tau"]][0] >= 0.5
    for c in range(10):
        expected = (hit & correct)[labels == c].mean() if (labels == c).any() else None
        assert rows["cam"]["per_class_top1_loc"][c] == (None if expected is None else pytest.approx(expected, abs=1e-4))
    # the segmentation row: its own boxes, from its own thresholds chosen on validation
    from cam_mnist.maps import segmentation

    seg = rows["cam + segmentation"]
    found = segmentation.segment(
        split.float_images(slice(0, 64)), maps, **{k: v for k, v in seg["segmentation"].items() if k != "method"}
    )
    assert seg["gt_known_loc_calibrated"] == pytest.approx(
        (bx.iou(bx.tight_boxes(found), split.boxes[:64]) >= 0.5).mean()
    )
    assert seg["mask_iou"] == pytest.approx(bx.mask_iou(found, split.masks[:64]).mean())
    # the sanity checks: every method, every stage; the failures' gallery, linked from the viewer
    stages = record["model_randomization"]["cam"]
    assert list(record["model_randomization"]) == list(METHODS) and len(stages) == 1 + 7
    top_down = ["logits", "gate_conv", "last_conv", "conv4", "conv3", "conv2", "conv1"]  # the gate: above last_conv
    assert [s["randomized"][-1] for s in stages[1:]] == top_down
    assert stages[0]["spearman"] == pytest.approx(1.0) and "gt_known_segmented" in stages[0]
    for kind in ("misclassified", "boxed_wrong"):
        if record["failures"][kind]["images"]:
            assert (run_copy / "eval" / f"failures_{kind}.png").exists()
            assert f"eval/failures_{kind}.png" in (run_copy / "index.html").read_text()

    result = run_cli(
        "localize", "--run-dir", run_copy, "--images", "64", "--methods", "cam", "--faithful-images", "8",
        "--examples", "2", "--sanity-images", "0", "--gallery", "0", "--data-dir", data_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    cam_row = lambda text: next(r for r in text.splitlines() if r.startswith("| cam |")).split("|")[:-2]  # noqa: E731
    assert cam_row(result.stdout) == cam_row(record["table"])  # the same numbers, all but the seconds
    assert run_cli("localize", "--run-dir", run_copy, "--methods", "nope", "--data-dir", data_dir).returncode == 2


def test_classification_metrics_on_a_hand_made_asymmetric_confusion():
    # 3 classes, 6 images: true 0 0 0 1 1 2, predicted 0 1 1 1 1 0. Rows are the true class: per-class accuracy is
    # each row's diagonal share (recall): 1/3, 2/2, 0/1. Its transpose would give precision instead: 1/2, 2/4, 0.
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 1, 0])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), predicted] = 0.8
    m = classification.classification_metrics(probs, labels)
    np.testing.assert_array_equal(m["confusion"], [[1, 2, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_allclose(m["per_class"], [1 / 3, 1.0, 0.0])
    assert m["accuracy"] == pytest.approx(3 / 6)
    # cross-entropy: -log of the true class's probability, 0.8 where right, 0.1 where wrong
    assert m["loss"] == pytest.approx(-(3 * np.log(0.8) + 3 * np.log(0.1)) / 6)
