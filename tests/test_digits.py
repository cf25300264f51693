"""Two digits per image: the multi-label head, its metrics, per-digit localization, and a tiny run end to end."""

import json

import numpy as np
import pytest
from PIL import Image

from cam_mnist.config import preset, validate
from cam_mnist.reports import evaluate
from cam_mnist.scoring import classification, localization


# ------------------------------------------------------------------------------------------------ hand-made inputs
def test_multilabel_metrics_hand_made():
    labels = np.array([[3, 7], [0, 1], [2, 5]])
    probs = np.full((3, 10), 0.1)
    probs[0, [3, 7]] = 0.9  # both named, nothing else: exact
    probs[1, [0, 4]] = [0.9, 0.5]  # one of two named, and a wrong class above the other
    probs[2, [2, 9, 5]] = [0.9, 0.85, 0.8]  # both likely, but a wrong class is among the two most probable
    m = classification.multilabel_metrics(probs, labels, "sigmoid")
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["per_digit"] == pytest.approx(4 / 6)
    truth = classification.multi_hot(labels, 10)
    assert truth.sum() == 6 and truth[0, 3] == truth[0, 7] == 1
    expected = -np.mean(truth * np.log(probs) + (1 - truth) * np.log(1 - probs))
    assert m["loss"] == pytest.approx(expected)
    np.testing.assert_array_equal(classification.detected(probs, labels), [[1, 1], [1, 0], [1, 0]])
    # Two classes named per image whatever their probabilities: a sigmoid's 0.45 and 0.4 still name 3 and 7.
    unsure = np.full((1, 10), 0.01)
    unsure[0, [3, 7]] = [0.45, 0.4]
    assert classification.multilabel_metrics(unsure, labels[:1], "sigmoid")["accuracy"] == 1.0
    certain = np.zeros((1, 10), np.float32)
    certain[0, [3, 7]] = 1.0  # a saturated float32 sigmoid: the loss must stay finite (it is 0 here)
    assert classification.multilabel_metrics(certain, labels[:1], "sigmoid")["loss"] == pytest.approx(0, abs=1e-9)


def test_multilabel_metrics_of_a_softmax_over_two_digits():
    # A softmax trained on 1/K per true class: its ideal output is 0.5 on each of two digits, never above 0.5.
    labels = np.array([[3, 7], [0, 1]])
    probs = np.full((2, 10), 0.0125)
    probs[0, [3, 7]] = 0.45
    probs[1, [0, 2]] = [0.6, 0.3]
    m = classification.multilabel_metrics(probs, labels, "softmax")
    assert m["accuracy"] == 0.5 and m["per_digit"] == 0.75
    # cross-entropy against the target (1/2 on each true class): -(0.5 log 0.45 + 0.5 log 0.45), and row 2's
    assert m["loss"] == pytest.approx(-(np.log(0.45) + 0.5 * np.log(0.6) + 0.5 * np.log(0.0125)) / 2)
    ideal = np.zeros((1, 10))
    ideal[0, [3, 7]] = 0.5
    assert classification.multilabel_metrics(ideal, labels[:1], "softmax")["loss"] == pytest.approx(np.log(2))


def _two_digit_truth():
    """One 40x40 image, digit 1 in the top-left, digit 2 in the bottom-right."""
    masks = np.zeros((1, 2, 40, 40), bool)
    masks[0, 0, 2:12, 4:10] = True
    masks[0, 1, 25:37, 28:36] = True
    boxes = np.array([[[2, 4, 12, 10], [25, 28, 37, 36]]])
    return masks, boxes


def test_per_digit_metrics_right_and_swapped_maps():
    masks, boxes = _two_digit_truth()
    right = masks.astype(np.float32)  # each class's map lies exactly on its own digit
    m = localization.per_digit_metrics(right, boxes, masks, np.array([[True, True]]))
    assert m["top1_loc"] == m["gt_known_loc"] == m["pointing"] == 1.0
    assert m["points_at_other_digit"] == 0.0
    swapped = right[:, ::-1]  # each class's map on the *other* digit: found a digit, but not its own
    m = localization.per_digit_metrics(swapped, boxes, masks, np.array([[True, True]]))
    assert m["gt_known_loc"] == m["pointing"] == 0.0 and m["points_at_other_digit"] == 1.0
    m = localization.per_digit_metrics(right, boxes, masks, np.array([[True, False]]))
    assert m["top1_loc"] == 0.5 and m["gt_known_loc"] == 1.0  # top-1 needs the class detected


def test_per_digit_metrics_zero_map_is_defined():
    masks, boxes = _two_digit_truth()
    m = localization.per_digit_metrics(np.zeros((1, 2, 40, 40), np.float32), boxes, masks, np.ones((1, 2), bool))
    assert all(np.isfinite(v) for v in m.values())
    assert m["top1_loc"] == m["gt_known_loc"] == 0.0


def test_the_two_digits_preset_is_valid_with_either_head():
    config = preset("two-digits")
    assert config.data.digits == 2
    for head, gauge in (("softmax", "min"), ("sigmoid", "none")):
        config.model.head, config.train.cam_gauge = head, gauge
        validate(config)
    config.train.cam_gauge = "min"  # a sigmoid per class sees each logit's level: no free gauge
    with pytest.raises(ValueError, match="cam_gauge needs the softmax head"):
        validate(config)


# --------------------------------------------------------------------------------------------------- a tiny run
@pytest.fixture(scope="module")
def tiny_two_digit_run(tmp_path_factory, run_cli, data_dir):
    run_dir = tmp_path_factory.mktemp("runs") / "two"
    result = run_cli(
        "train", "--preset", "tiny", "--digits", "2", "--head", "sigmoid", "--cam-gauge", "none", "--map-entropy", "0",
        "--canvas", "60", "--run-dir", run_dir, "--quiet", "--data-dir", data_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run_dir


def test_tiny_run_model_is_multilabel(tiny_two_digit_run, data_dir):
    import keras

    model = keras.models.load_model(tiny_two_digit_run / "model.keras")
    probs = model.predict(np.random.default_rng(0).random((3, 60, 60, 1), np.float32), verbose=0)
    assert probs.shape == (3, 10) and ((probs > 0) & (probs < 1)).all()
    assert not np.allclose(probs.sum(1), 1.0)  # a sigmoid per class, not a softmax
    summary = json.loads((tiny_two_digit_run / "summary.json").read_text())
    assert summary["test_accuracy"] == pytest.approx(_final_metrics(tiny_two_digit_run, data_dir)["accuracy"], abs=1e-4)


def _final_metrics(run_dir, data_dir) -> dict:
    """Exact match and per-digit accuracy of the run's saved model on its test split, computed here."""
    import keras

    from cam_mnist.config import RunConfig

    model = keras.models.load_model(run_dir / "model.keras")
    config = RunConfig.load(run_dir / "config.json")
    _, test = evaluate.split_for(config, data_dir)
    probs = classification.predict_probs(lambda x: np.asarray(model(x, training=False)), test)
    return classification.multilabel_metrics(probs, test.labels, config.model.head)


def test_tiny_run_draws_both_classes(tiny_two_digit_run):
    one = np.asarray(Image.open(tiny_two_digit_run / "heatmaps" / "img_00" / "step_0000012.png"))
    assert one.shape[1] == 2 * 120 + 2  # two 60-pixel maps at scale 2, side by side
    with Image.open(tiny_two_digit_run / "heatmaps" / "img_00" / "evolution.gif") as gif:
        assert gif.n_frames == len(list((tiny_two_digit_run / "heatmaps" / "img_00").glob("step_*.png")))
    page = (tiny_two_digit_run / "index.html").read_text()  # the viewer says what the two maps are
    assert "CAM of each of the 2 true classes" in page and "predicted class" not in page


def test_tiny_run_eval_and_localize(tiny_two_digit_run, run_cli, data_dir):
    result = run_cli("eval", "--run-dir", tiny_two_digit_run, "--quiet", "--no-robustness", "--data-dir", data_dir)
    assert result.returncode == 0, result.stderr
    assert "per_digit_accuracy" in result.stdout
    rows, final = evaluate.evaluate_run(tiny_two_digit_run, data_dir, progress=False)
    assert float(rows[12]["per_digit_accuracy"]) == pytest.approx(
        _final_metrics(tiny_two_digit_run, data_dir)["per_digit"], abs=1e-5
    )
    assert "confusion" not in final
    result = run_cli("localize", "--run-dir", tiny_two_digit_run, "--images", "200", "--data-dir", data_dir)
    assert result.returncode == 0, result.stderr
    record = json.loads((tiny_two_digit_run / "eval" / "localization_digits.json").read_text())
    # Several digits per image: the fast layer-level methods, which are class-discriminative.
    assert [r["method"] for r in record["methods"]] == [
        "cam", "gradcam", "gradcam++", "layercam", "hirescam", "xgradcam", "gradcam-elementwise", "eigengradcam",
        "shapleycam", "finercam", "baseline: centre", "baseline: random",
    ]  # fmt: skip
    assert all(r["images"] == 200 for r in record["methods"])
    assert (tiny_two_digit_run / "eval" / "localization_digits_examples.png").stat().st_size > 0


def test_a_softmax_over_two_digits_trains_on_half_of_each_digit(tmp_path, run_cli, data_dir):
    # The softmax head on two digits per image (Mahajan et al. 2018): its target is 1/2 on each digit's class, it
    # names its two most probable classes, and it has the softmax's free gauge, so the CAM weights stay >= 0.
    import keras

    from cam_mnist.config import RunConfig
    from cam_mnist.data.splits import training_data
    from cam_mnist.train.trainer import Trainer

    run_dir = tmp_path / "softmax"
    result = run_cli(
        "train", "--preset", "tiny", "--digits", "2", "--head", "softmax", "--cam-gauge", "min", "--map-entropy", "0",
        "--canvas", "60", "--run-dir", run_dir, "--quiet", "--data-dir", data_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = keras.models.load_model(run_dir / "model.keras")
    probs = model.predict(np.random.default_rng(0).random((3, 60, 60, 1), np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)  # one distribution over the classes
    kernel = model.get_layer("logits").kernel.numpy()
    np.testing.assert_allclose(kernel.min(1), 0, atol=1e-6)
    summary = json.loads((run_dir / "summary.json").read_text())
    final = _final_metrics(run_dir, data_dir)
    assert summary["test_accuracy"] == pytest.approx(final["accuracy"], abs=1e-4)
    assert summary["test_loss"] == pytest.approx(final["loss"], rel=1e-4)

    config = RunConfig.load(run_dir / "config.json")
    trainer = Trainer(config, tmp_path / "unused", training_data(config, data_dir), log=lambda *a: None)
    images, targets = trainer.batch(0)
    labels = trainer._epoch_data.rows(slice(0, len(images))).labels
    assert targets.shape == (len(images), 10)
    np.testing.assert_array_equal(np.take_along_axis(targets, labels, 1), 0.5)
    np.testing.assert_allclose(targets.sum(1), 1.0)
