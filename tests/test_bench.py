"""`make bench`'s timing: the pairing that makes a method's share of the forward pass resolvable on a machine
whose speed drifts, and the CAM-family table on a real (tiny) trained model."""

import sys
import time

import keras
import numpy as np
import pytest

from cam_mnist.config import RunConfig
from cam_mnist.data.splits import load_split
from cam_mnist.maps import registry
from cam_mnist.reports import bench


def test_paired_rates_alternate_and_measure_each_function():
    calls = []

    def cheap(batch):
        calls.append("cheap")
        time.sleep(0.005)

    def dear(batch):
        calls.append("dear")
        time.sleep(0.015)

    # sleeps long beside a loaded machine's oversleep (~1-2 ms), so the 3:1 ratio holds on CI too
    batches = [np.zeros((4, 2))] * 3 + [np.zeros((2, 2))]  # 14 images
    fast, slow = bench.paired_rates(cheap, dear, batches, repeats=2)
    timed = calls[2:]  # after one warm-up call of each
    pairs = [tuple(timed[i : i + 2]) for i in range(0, len(timed), 2)]
    assert len(pairs) == 2 * len(batches)
    expected = [("cheap", "dear") if (r + i) % 2 == 0 else ("dear", "cheap") for r in range(2) for i in range(4)]
    assert pairs == expected  # which goes first alternates batch by batch, and between repeats
    assert fast == pytest.approx(14 / (4 * 0.005), rel=0.5) and slow == pytest.approx(14 / (4 * 0.015), rel=0.5)
    assert 2 < fast / slow < 4


def test_cam_family_rows_on_a_trained_model(tiny_run, data_dir):
    model = keras.models.load_model(tiny_run / "model.keras")
    config = RunConfig.load(tiny_run / "config.json")
    images = load_split("test", config.data, data_dir).float_images(slice(0, 16))
    rows = bench.cam_family(model, images, slow_images=2, forward=1000.0)
    assert [r["method"] for r in rows] == list(registry.METHODS)
    for row in rows:
        slow = registry.METHODS[row["method"]].slow
        assert row["images"] == (2 if slow else 16)
        assert row["maps_per_s"] > 0 and row["forward_beside"] > 0
        assert row["share_of_forward"] == pytest.approx(row["maps_per_s"] / row["forward_beside"], abs=1e-3)
        if slow:  # measured once beside them all
            assert row["forward_beside"] == 1000.0
        else:  # timed in turn with the method: its own measurement
            assert row["forward_beside"] != 1000.0


def test_peak_memory_is_the_commands_own():
    from cam_mnist.reports import bench_memory

    # A command that holds 300 MB at once: its peak, not this process's, and within what Python adds.
    big = bench_memory.peak([sys.executable, "-c", "import numpy as np; a = np.ones(300 * 2**20 // 8); print(a.sum())"])
    small = bench_memory.peak([sys.executable, "-c", "print(1)"])
    assert 300 < big["peak_rss_mb"] < 300 + small["peak_rss_mb"] + 100 and small["peak_rss_mb"] < 100
    assert big["wall_s"] > 0


ARENAS = """
import ctypes, sys, threading
from cam_mnist.core.memory import few_malloc_arenas
if sys.argv[1] == "limit":
    assert few_malloc_arenas(2)
keep, ready = [], threading.Barrier(7)
def work():  # each thread mallocs while the others are alive: glibc gives it an arena of its own if it may
    keep.append(bytearray(100_000))
    ready.wait()
threads = [threading.Thread(target=work) for _ in range(6)]
[t.start() for t in threads]; ready.wait(); [t.join() for t in threads]
libc = ctypes.CDLL("libc.so.6")
libc.fflush(None); libc.malloc_info(0, ctypes.c_void_p.in_dll(libc, "stdout")); libc.fflush(None)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_command_lines_arena_limit_keeps_threads_to_two_malloc_arenas():
    import subprocess

    # malloc_info lists one <heap> per arena: six threads allocating at once spread over seven without the limit.
    heaps = {
        kind: subprocess.run(
            [sys.executable, "-c", ARENAS, kind], capture_output=True, text=True, check=True
        ).stdout.count("<heap nr=")
        for kind in ("limit", "none")
    }
    assert heaps == {"limit": 2, "none": 7}


def test_a_nested_application_row_per_method():
    from cam_mnist.reports.bench import nested_application

    result = nested_application(size=64, batch=4, batches=2, score_images=1)
    rows = {r["method"]: r for r in result["methods"]}
    assert list(rows) == ["cam", "gradcam", "scorecam"] and rows["cam"]["layer"] == "mobilenetv2_1.00_64/out_relu"
    assert 0 < rows["cam"]["share_of_forward"] < 2 and rows["scorecam"]["channels"] == 1280


def test_the_vision_transformer_row_times_every_fast_method_at_the_last_blocks_norm():
    pytest.importorskip("keras_hub")
    result = bench.vision_transformer(size=32, batch=2, batches=1)  # patch 16: a 2 x 2 grid
    assert [r["method"] for r in result["methods"]] == list(bench.FAST_ON_TOKENS)
    for row in result["methods"]:
        assert row["layer"].endswith("/vit_encoder/transformer_block_4/ln_1"), row
        assert row["maps_per_s"] > 0 and row["share_of_forward"] == pytest.approx(
            row["maps_per_s"] / row["forward_beside"], rel=0.01
        )
    assert "patch 16, 4 blocks" in bench.to_markdown(
        {
            "machine": {"cpus": 2, "tensorflow": "x", "keras": "y"},
            "date": "d",
            "matmul_peak_gflops": 1,
            "training": [],
            "transformer": result,
        }
    )
