"""The package as a user installs and imports it: no import cycle, a wheel with the console script, one error
type for the user's mistakes."""

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

PACKAGE = "cam_mnist"


def _modules(root: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in (root / PACKAGE).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at the top or inside a function (a lazy import is still an
    edge: the cycle it closes is one the code has)."""
    modules = _modules(root)
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:  # `from cam_mnist import config` imports the module cam_mnist.config
                    sub = f"{node.module}.{a.name}"
                    edges.add(sub if sub in modules else node.module)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle(repo_root):
    graph = import_graph(repo_root)
    assert {
        "cam_mnist.commands.main",
        "cam_mnist.commands.explain",
        "cam_mnist.commands.localize",
        "cam_mnist.maps.base",
    } <= set(graph)
    assert "cam_mnist.commands.common" in graph["cam_mnist.commands.explain"]  # the walk sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# The pipeline, lowest first: a module may import its own layer and those before it, never one after it.
LAYERS = ["core", "config", "data", "model", "maps", "scoring", "viz", "train", "reports", "commands"]


def layer_of(module: str) -> int | None:
    """The rank of ``module``'s layer in :data:`LAYERS`; None for the package's facade (``cam_mnist``, its
    ``__main__``), which stands above them all."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a later layer by an earlier one, as "importer -> imported"."""
    return [
        f"{a} -> {b}"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if layer_of(a) is not None and (layer_of(b) is None or layer_of(b) > layer_of(a))
    ]


def test_every_layer_imports_only_the_layers_before_it(repo_root):
    graph = import_graph(repo_root)
    top = {m.split(".")[1] for m in graph if m.count(".") >= 1 and m != "cam_mnist.__main__"}
    assert top == set(LAYERS), "a module outside the layers: add it to LAYERS in its place, or move it"
    assert upward_imports(graph) == []


def test_the_layer_check_sees_an_upward_import():
    graph = {"cam_mnist.core.boxes": {"cam_mnist.maps.base"}, "cam_mnist.maps.base": {"cam_mnist.core.boxes"}}
    assert upward_imports(graph) == ["cam_mnist.core.boxes -> cam_mnist.maps.base"]
    assert upward_imports({"cam_mnist.data.splits": {"cam_mnist"}}) == ["cam_mnist.data.splits -> cam_mnist"]


def test_the_cycle_finder_finds_one():
    # The detector itself: the circle the commands once made (cli -> explain_cli -> cli) is found.
    graph = {"cli": {"explain_cli", "runs"}, "explain_cli": {"cli"}, "runs": set()}
    assert find_cycle(graph) == ["cli", "explain_cli", "cli"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_command_line_starts_without_tensorflow():
    # --help and the parser must not pay for TensorFlow's import (seconds, and its start-up messages).
    code = (
        "import sys, cam_mnist.commands.main as c; c.build_parser(); "
        "print(any(m.startswith(('tensorflow', 'keras')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_wheel_has_every_module_and_the_console_script(repo_root, tmp_path):
    # What `pip install .` installs: built here (setuptools is fetched from the package index), then installed
    # without dependencies into a folder of its own and run from another directory by its console script.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp_path / "dist", repo_root],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0 and "No matching distribution found for setuptools" in built.stderr:
        pytest.skip("no package index reachable to fetch setuptools for the build")
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("cam_mnist-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    expected = {p.relative_to(repo_root).as_posix() for p in (repo_root / PACKAGE).rglob("*.py")}
    assert expected <= names
    assert "cam-mnist = cam_mnist.commands.main:main" in entry_points
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", site, wheel], check=True
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [site / "bin" / "cam-mnist", "--help"],
        cwd=elsewhere,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "presets (train --preset NAME)" in result.stdout
    code = "import cam_mnist, pathlib; print(pathlib.Path(cam_mnist.__file__).parent)"
    where = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        env={"PYTHONPATH": str(site)},
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    assert Path(where) == site / PACKAGE  # the installed copy, not the checkout


def test_a_user_error_is_one_line_and_exit_2_and_a_bug_keeps_its_traceback(run_cli, tmp_path, monkeypatch):
    from cam_mnist.commands import main as cli
    from cam_mnist.commands import tools
    from cam_mnist.core.errors import CheckpointError, DataError, UserError

    assert issubclass(DataError, UserError) and issubclass(CheckpointError, UserError)
    result = run_cli("eval", "--run-dir", tmp_path / "nowhere")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere'}: no such run folder; train one with `make train`"
    ]

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(tools, "run_methods", bug)
    with pytest.raises(KeyError):  # not turned into exit status 2: its traceback reaches the user
        cli.main(["methods"])


def test_mistakes_are_answered_before_tensorflow_is_imported(tiny_run, tmp_path, repo_root):
    """A wrong folder, file or flag is answered without the 4 s TensorFlow import: a ``tensorflow`` and a ``keras``
    that fail on import stand first on the path, so a command that imported them would end in an ImportError."""
    fake = tmp_path / "fake"
    fake.mkdir()
    for name in ("tensorflow", "keras"):
        (fake / f"{name}.py").write_text(f"raise ImportError('{name} imported')\n")
    not_a_model = tmp_path / "m.keras"
    not_a_model.write_text("not a model")
    (tmp_path / "a.png").write_bytes(b"")
    no_checkpoint = tmp_path / "fresh"
    no_checkpoint.mkdir()
    (no_checkpoint / "config.json").write_bytes((tiny_run / "config.json").read_bytes())
    retired = tmp_path / "retired"  # a run saved under a preset retired since: resumable, its flags still checked
    retired.mkdir()
    (retired / "config.json").write_text((tiny_run / "config.json").read_text().replace('"tiny"', '"quick"', 1))
    mistakes = {
        ("eval", "--run-dir", tmp_path / "nowhere"): "no such run folder",
        ("eval", "--run-dir", tiny_run, "--every", "0"): "--every must be at least 1",
        ("localize", "--run-dir", no_checkpoint): "no checkpoints in",
        ("eval", "--run-dir", tiny_run, "--data-dir", tmp_path / "no-data"): "no MNIST file; run `make data`",
        ("train", "--run-dir", tiny_run, "--steps", "7"): "was started with other settings (steps)",
        ("train", "--run-dir", retired, "--steps", "7"): "was started with other settings (steps)",
        ("train", "--preset", "quick"): "preset 'quick' is retired: the default now trains in less time",
        ("train", "--preset", "nope"): "unknown preset 'nope': choose one of default,",
        ("explain", tmp_path / "a.png", "--model", not_a_model): "not a Keras model",
        ("layers", "--model", tmp_path / "none.keras"): "no such model file",
        ("frontier", "--run-dir", tmp_path / "nowhere"): "no such run folder",
    }
    env = {**os.environ, "PYTHONPATH": str(fake)}
    for argv, message in mistakes.items():
        result = subprocess.run(
            [sys.executable, "-m", PACKAGE, *map(str, argv)], cwd=repo_root, env=env, capture_output=True, text=True
        )
        assert result.returncode == 2 and message in result.stderr, (argv, result.stderr[-500:])
    from cam_mnist.core.lock import writing

    held = tmp_path / "held"
    shutil.copytree(tiny_run, held)
    with writing(held, "train"):  # a folder another process writes into
        for command in ("eval", "localize", "train"):
            result = subprocess.run(
                [sys.executable, "-m", PACKAGE, command, "--run-dir", str(held)], cwd=repo_root, env=env, text=True,
                capture_output=True,
            )  # fmt: skip
            assert result.returncode == 2 and f"is in use: process {os.getpid()}" in result.stderr, result.stderr
    # the fake modules do stand in the way: a command that needs TensorFlow fails on them
    result = subprocess.run(
        [sys.executable, "-m", PACKAGE, "eval", "--run-dir", tiny_run], cwd=repo_root, env=env, capture_output=True
    )
    assert b"ImportError: keras imported" in result.stderr


def test_the_console_stays_quiet(tiny_run, tmp_path, run_cli):
    # TensorFlow's start-up messages (oneDNN, CUDA probing, absl's preamble) stay out of a command's output.
    from PIL import Image

    picture = tmp_path / "digit.png"
    Image.fromarray(((np.random.default_rng(0).random((40, 40)) < 0.1) * 255).astype(np.uint8)).save(
        picture
    )  # ink on black
    result = run_cli("explain", picture, "--run-dir", tiny_run, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[0].startswith("image")  # the table is the first thing printed


def test_the_public_paths_of_the_flat_layout_still_import():
    # Code written before the subpackages keeps working: the old module paths are the new modules themselves.
    import importlib

    import cam_mnist

    for old, new in cam_mnist.MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from cam_mnist.callbacks import CAMCallback
    from cam_mnist.cams import explain

    from cam_mnist.train.callbacks import CAMCallback as moved

    assert CAMCallback is moved is cam_mnist.CAMCallback
    assert explain is cam_mnist.explain is importlib.import_module("cam_mnist.maps.explainer").explain


def test_importing_the_package_loads_no_tensorflow():
    # PEP 562: `import cam_mnist` and the numpy-only layers cost no TensorFlow; the first `cam_mnist.explain` does.
    code = (
        "import sys, cam_mnist, cam_mnist.core.boxes, cam_mnist.data.splits, cam_mnist.scoring.localization, "
        "cam_mnist.reports.evaluate; print(any(m.startswith(('tensorflow', 'keras')) for m in sys.modules)); "
        "cam_mnist.explain; print('keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
