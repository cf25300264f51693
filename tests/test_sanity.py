"""The sanity checks (Adebayo et al. 2018): re-initialisation that really re-initialises, similarity measures checked
against scipy and by hand, and the localization metrics cross-checked against Quantus on the same maps."""

import keras
import numpy as np
import pytest
from scipy import stats

from cam_mnist import config
from cam_mnist.core import boxes as bx
from cam_mnist.model import build_model
from cam_mnist.reports import sanity as sanity_report
from cam_mnist.scoring import sanity


@pytest.fixture
def tiny_model():
    keras.utils.set_random_seed(0)
    return build_model(config.preset("tiny").model, 40)


def test_blocks_go_from_the_logits_down_with_each_batch_norm_beside_its_conv(tiny_model):
    # The local gate's conv sits between last_conv and its batch norm in the model's layer list (a branch from the
    # image); each batch norm still joins the conv that feeds it.
    listed = [layer.name for layer in tiny_model.layers]
    assert listed.index("last_conv") < listed.index("gate_conv") < listed.index("last_conv_bn")
    names = [[layer.name for layer in block] for block in sanity.blocks(tiny_model)]
    assert names == [
        ["logits"],
        ["gate_conv", "gate_bn"],
        ["last_conv", "last_conv_bn"],
        ["conv4", "conv4_bn"],
        ["conv3", "conv3_bn"],
        ["conv2", "conv2_bn"],
        ["conv1", "conv1_bn"],
    ]


def test_the_cascade_changes_each_block_in_turn_and_nothing_below_it(tiny_model):
    trained = [w + 0.5 for w in tiny_model.get_weights()]  # moved away from every initial value (BN's ones, zeros)
    tiny_model.set_weights(trained)
    copy = sanity.copy_of(tiny_model)
    order = [layer for block in sanity.blocks(copy) for layer in block]
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in order}
    for step, done in enumerate(sanity.cascade(copy, seed=3)):
        changed = {layer.name for block in sanity.blocks(copy)[: step + 1] for layer in block}
        assert done[-1] == sanity.blocks(copy)[step][0].name
        for layer in order:
            same = [np.array_equal(a, b) for a, b in zip(before[layer.name], layer.get_weights(), strict=True)]
            assert not any(same) if layer.name in changed else all(same), (step, layer.name)
    bn = copy.get_layer("conv4_bn")  # its own initializers: gamma 1, beta 0, moving mean 0, variance 1
    for w, value in zip(bn.get_weights(), (1, 0, 0, 1), strict=True):
        np.testing.assert_array_equal(w, value)
    np.testing.assert_array_equal(tiny_model.get_weights()[0], trained[0])  # the original is untouched
    # seeded: the same cascade again gives the same weights, another seed others
    again, other = sanity.copy_of(tiny_model), sanity.copy_of(tiny_model)
    list(sanity.cascade(again, seed=3)), list(sanity.cascade(other, seed=4))
    for a, b in zip(copy.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(copy.get_layer("logits").kernel.numpy(), other.get_layer("logits").kernel.numpy())


def test_spearman_equals_scipys_with_ties(rng):
    a = rng.random((4, 6, 6))
    b = a + rng.normal(0, 0.3, a.shape)
    a[0, :3] = 0  # ties, as a ReLU's zeros make them
    b[1] = 0.7  # a constant map: no correlation, not NaN
    ours = sanity.spearman(a, b)
    for i in (0, 2, 3):
        assert ours[i] == pytest.approx(stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic)
    assert ours[1] == 0.0
    np.testing.assert_allclose(sanity.spearman(a, a), 1.0)
    np.testing.assert_allclose(sanity.spearman(a[2:], -a[2:]), -1.0)


def test_ssim_of_a_map_with_itself_is_one_and_with_its_inverse_low(rng):
    maps = rng.random((2, 20, 20)).astype(np.float32)
    np.testing.assert_allclose(sanity.ssim(maps, maps), 1.0)
    assert (sanity.ssim(maps, 1 - maps) < 0).all()


def test_the_mark_needs_both_the_box_and_the_ranking_gone():
    stage = lambda gt, rank: {"gt_known": gt, "spearman_abs": rank}  # noqa: E731
    trained = stage(0.9, 1.0)
    assert sanity_report.depends_on_model([trained, stage(0.5, 0.6), stage(0.1, 0.2), stage(0.0, 0.1)])
    assert not sanity_report.depends_on_model([trained, stage(0.9, 0.9), stage(0.8, 0.3), stage(0.0, 0.1)])
    assert not sanity_report.depends_on_model([trained, stage(0.3, 0.6), stage(0.1, 0.7), stage(0.1, 0.1)])


def test_pointing_game_and_relevance_mass_agree_with_quantus(rng):
    quantus = pytest.importorskip("quantus", reason="Quantus (requirements-test.txt) is not installed")
    n = 12
    maps = rng.random((n, 1, 24, 24)).astype(np.float32) ** 4  # (N, 1, H, W): Quantus' channels-first maps
    masks = np.zeros((n, 1, 24, 24), bool)
    for i in range(n):
        y, x = rng.integers(0, 16, 2)
        masks[i, 0, y : y + 8, x : x + 6] = True
        if i % 3 == 0:
            maps[i, 0, y + 2, x + 2] = 2.0  # some maps peak on the digit, the others by chance
    x_batch = rng.random((n, 1, 24, 24)).astype(np.float32)
    y_batch = np.zeros(n, int)
    kwargs = {"model": None, "x_batch": x_batch, "y_batch": y_batch, "a_batch": maps, "s_batch": masks}
    pointing = quantus.PointingGame(disable_warnings=True)(**kwargs, channel_first=True)
    ours = bx.pointing_game(maps[:, 0], masks[:, 0])
    np.testing.assert_array_equal(np.array(pointing, bool), ours)
    assert 0 < ours.mean() < 1
    mass = quantus.RelevanceMassAccuracy(disable_warnings=True)(**kwargs, channel_first=True)
    np.testing.assert_allclose(mass, bx.relevance_mass(maps[:, 0], masks[:, 0]), rtol=1e-5)
