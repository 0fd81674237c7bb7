"""Crafted and careless inputs against the command line, as a user and as an attacker would try them.

Every case runs ``python -m mobilenet_v1`` in its own process, under a memory limit (a regression that allocates
what a crafted file declares fails instead of exhausting the machine), and asserts what the user sees: the exit
code, exactly one line on stderr naming the file or option and the problem, no traceback, no file changed or
left behind in the directories involved, and — where a call also holds good inputs — the good ones processed.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mobilenet_v1.checkpoint import Preprocessing, Pretrained, save_pretrained
from mobilenet_v1.model import MobileNetV1, ModelConfig

pytestmark = pytest.mark.slow
MEMORY_LIMIT = 6 << 30  # bytes of data segment per case: torch and a small model need ~1.5 GB
CLASSES = ["cat", "dog", "fish"]


def _limited(fsize: int | None = None):
    def preexec():
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))
        if fsize is not None:  # a full disk, as a writer sees it: writes past the limit fail (EFBIG)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return preexec


def cli(*argv, cwd: Path, fsize: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MOBILENET_V1_CACHE": str(cwd / ".cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mobilenet_v1", *map(str, argv)], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, preexec_fn=_limited(fsize))  # fmt: skip


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``roots`` (the cache excluded): what "nothing changed" compares."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")) if Path(root).is_dir() else [Path(root)]:
            if p.is_file() and ".cache" not in p.parts:
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def assert_one_line(result: subprocess.CompletedProcess, rc: int, *fragments: str) -> str:
    err = result.stderr.strip()
    lines = err.splitlines()
    assert result.returncode == rc, (result.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A small model directory, a good photo, and room for the cases' files."""
    root = tmp_path_factory.mktemp("crafted")
    torch.manual_seed(0)
    model = MobileNetV1(config=ModelConfig(0.25, 64, num_classes=3)).eval()
    save_pretrained(model, root / "model", Pretrained(model.config, Preprocessing(input_size=64), CLASSES))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(root / "good.png")
    return root


def model_with(work: Path, name: str, edit) -> Path:
    """A copy of the model directory whose config.json ``edit(config)`` changed."""
    out = work / name
    out.mkdir(exist_ok=True)
    (out / "model.safetensors").write_bytes((work / "model" / "model.safetensors").read_bytes())
    config = json.loads((work / "model" / "config.json").read_text())
    edited = edit(config)
    (out / "config.json").write_text(edited if isinstance(edited, str) else json.dumps(config))
    return out


def _set(path: str, value):
    def edit(config):
        *keys, last = path.split(".")
        node = config
        for k in keys:
            node = node[k]
        node[last] = value

    return edit


CONFIGS = {  # config.json as a careless editor or an attacker leaves it -> what the message must say
    "alpha_inf": (_set("model.width_multiplier", float("inf")), "width_multiplier"),
    "alpha_huge": (_set("model.width_multiplier", 1e6), "width_multiplier"),
    "alpha_bool": (_set("model.width_multiplier", True), "width_multiplier"),
    "resolution_huge": (_set("model.resolution", 10**7), "resolution"),
    "resolution_text": (_set("model.resolution", "224"), "resolution"),
    "classes_negative": (_set("model.num_classes", -3), "num_classes"),
    "eps_nan": (_set("model.bn_eps", float("nan")), "bn_eps"),
    "model_list": (_set("model", [1, 2]), "model config must be an object"),
    "class_names_short": (_set("class_names", ["cat"]), "class_names has 1 names for 3 classes"),
    "class_names_numbers": (_set("class_names", [1, 2, 3]), "class_names must be a list of strings"),
    "label_offset_past": (_set("label_offset", 5), "label_offset must be 0 or 1"),
    "mean_short": (_set("preprocessing.mean", [0.5, 0.5]), "mean must be a list of 1 or 3"),
    "std_zero": (_set("preprocessing.std", [0.0, 1.0, 1.0]), "std must be positive"),
    "preprocessing_text": (_set("preprocessing", "bilinear"), "preprocessing must be an object"),
    "input_size_huge": (_set("preprocessing.input_size", 10**6), "input_size"),
    "not_json": (lambda c: "{not json", "not valid JSON"),
    "other_format": (_set("format", "keras"), "not a mobilenet-v1 config"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_crafted_config_is_one_line_and_changes_nothing(work, case):
    edit, fragment = CONFIGS[case]
    model_dir = model_with(work, f"config_{case}", edit)
    before = snapshot(model_dir, work / "good.png")
    result = cli("predict", model_dir, work / "good.png", cwd=work)
    assert_one_line(result, 2, "config.json", fragment)
    assert snapshot(model_dir, work / "good.png") == before


def _weights(state_of):
    def write(work: Path, path: Path):
        state = dict(MobileNetV1(config=ModelConfig(0.25, 64, num_classes=3)).state_dict())
        save_file({k: v.contiguous() for k, v in state_of(state).items()}, path)

    return write


WEIGHTS = {  # model.safetensors replaced -> what the message must say
    "int8": (_weights(lambda s: {k: (v.to(torch.int8) if "conv" in k else v) for k, v in s.items()}), "torch.int8"),
    "bool": (_weights(lambda s: {k: (v.bool() if k.endswith("bn.weight") else v) for k, v in s.items()}), "bool"),
    "nan": (_weights(lambda s: {k: (v.fill_(float("nan")) if k.endswith("conv.weight") else v)
                                for k, v in s.items()}), "NaN or infinite"),  # fmt: skip
    "missing_keys": (_weights(lambda s: {k: v for k, v in s.items() if "Conv2d_5" not in k}), "missing"),
    "other_alpha": (lambda work, path: save_file(MobileNetV1(config=ModelConfig(0.5, 64, num_classes=3)).state_dict(),
                                                 path), "expects"),  # fmt: skip
    "truncated": (lambda work, path: path.write_bytes((work / "model" / "model.safetensors").read_bytes()[:5000]),
                  "model.safetensors"),  # fmt: skip
    "pickle": (lambda work, path: torch.save({"x": torch.zeros(1)}, path), "model.safetensors"),
    "empty": (lambda work, path: path.write_bytes(b""), "model.safetensors"),
}


@pytest.mark.parametrize("case", list(WEIGHTS))
def test_crafted_weights_are_one_line_and_change_nothing(work, case):
    write, fragment = WEIGHTS[case]
    model_dir = model_with(work, f"weights_{case}", lambda c: None)
    write(work, model_dir / "model.safetensors")
    before = snapshot(model_dir)
    result = cli("predict", model_dir, work / "good.png", cwd=work)
    assert_one_line(result, 2, "model.safetensors", fragment)
    assert snapshot(model_dir) == before


def _bomb(path: Path):
    Image.new("L", (9000, 9000)).save(path, optimize=True)  # 80 kB that decode to 81 M pixels


IMAGES = {  # one bad image beside a good one: one line naming it, the good one still predicted
    "bomb.png": (_bomb, "pixels is over"),
    "truncated.png": (lambda p: p.write_bytes(Path(p.parent / "good.png").read_bytes()[:300]), "not a readable image"),
    "empty.jpg": (lambda p: p.write_bytes(b""), "not a readable image"),
    "text.jpg": (lambda p: p.write_text("not an image"), "not a readable image"),
    "missing.png": (lambda p: None, "no such file"),
    "folder.png": (lambda p: p.mkdir(exist_ok=True), "folder.png"),
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_bad_image_is_reported_and_the_good_one_still_predicted(work, name):
    make, fragment = IMAGES[name]
    bad = work / "images" / name
    bad.parent.mkdir(exist_ok=True)
    (bad.parent / "good.png").write_bytes((work / "good.png").read_bytes())
    make(bad)
    result = cli("predict", work / "model", bad.parent / "good.png", bad, cwd=work)
    assert_one_line(result, 1, name, fragment)
    assert result.stdout.startswith(f"{bad.parent / 'good.png'}: ") and len(result.stdout.splitlines()) == 1


OPTIONS = {  # a value out of range: one usage line naming the option, before anything is read
    "topk_zero": (["predict", "{model}", "{good}", "--topk", "0"], "--topk"),
    "topk_negative": (["predict", "{model}", "{good}", "--topk", "-1"], "--topk"),
    "subset_negative": (["eval", "{model}", "--subset", "-5"], "--subset"),
    "split_bogus": (["eval", "{model}", "--split", "bogus"], "--split"),
    "epochs_zero": (["train", "--out", "{work}/never", "--epochs", "0"], "--epochs"),
    "batch_zero": (["train", "--out", "{work}/never", "--batch-size", "0"], "--batch-size"),
    "workers_negative": (["train", "--out", "{work}/never", "--workers", "-1"], "--workers"),
    "calibration_images_zero": (["export", "{model}", "--int8", "--calibration", "{work}",
                                 "--calibration-images", "0", "-o", "{work}/never.onnx"], "--calibration-images"),
    "threads_zero": (["bench", "--threads", "0"], "--threads"),
    "alpha_text": (["summary", "--alpha", "wide"], "--alpha"),
    "padding_bogus": (["summary", "--padding", "valid"], "padding"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OPTIONS))
def test_option_out_of_range_is_one_line(work, case):
    argv, fragment = OPTIONS[case]
    argv = [a.format(model=work / "model", good=work / "good.png", work=work) for a in argv]
    before = snapshot(work)
    assert_one_line(cli(*argv, cwd=work), 2, fragment)
    assert snapshot(work) == before


def _huge_constant_graph(path: Path):
    """A GraphDef declaring a 10⁶ × 10⁶ float constant with one value: 20 bytes on disk, 4 TB if allocated."""
    from tensorboard.compat.proto import graph_pb2

    g = graph_pb2.GraphDef()
    n = g.node.add(name="MobilenetV1/Conv2d_0/weights", op="Const")
    n.attr["dtype"].type = 1
    t = n.attr["value"].tensor
    t.dtype = 1
    for size in (10**6, 10**6):
        t.tensor_shape.dim.add(size=size)
    t.float_val.append(0.5)
    path.write_bytes(g.SerializeToString())


def _huge_hdf5(path: Path):
    """A Keras-style HDF5 file whose one dataset declares 10¹⁰ values (never written: the file stays small)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"conv1"]
        g = f.create_group("conv1")
        g.create_dataset("conv1/kernel:0", shape=(100_000, 100_000), dtype="f4", chunks=(1000, 1000))
        g.attrs["weight_names"] = [b"conv1/kernel:0"]


def _timm_pickle(path: Path):
    class Evil:  # a pickle that would run code if loaded
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"conv_stem.weight": Evil()}, path)


CONVERT = {  # a source file -> what the one line says; nothing is written
    "huge.pb": (_huge_constant_graph, "larger than any MobileNet weight"),
    "noise.pb": (lambda p: p.write_bytes(np.random.default_rng(1).bytes(4096)), "noise.pb"),
    "huge.h5": (_huge_hdf5, "larger than any MobileNet weight"),
    "truncated.h5": (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100), "truncated.h5"),
    "evil.pth": (_timm_pickle, "not a readable PyTorch state dict"),
    "empty.tar.gz": (lambda p: p.write_bytes(gzip.compress(b"")), "empty.tar.gz"),
    "unknown.bin": (lambda p: p.write_bytes(b"\0" * 64), "unknown.bin"),
}


@pytest.mark.parametrize("name", list(CONVERT))
def test_crafted_source_is_one_line_and_writes_nothing(work, name):
    make, fragment = CONVERT[name]
    folder = work / "convert" / name.replace(".", "_")
    folder.mkdir(parents=True, exist_ok=True)
    make(folder / name)
    before = snapshot(folder)
    assert_one_line(cli("convert", folder / name, "-o", folder / "out", cwd=folder), 2, name, fragment)
    assert snapshot(folder) == before and not (folder / "out").exists() and not (folder / "pwned").exists()


def _train(*argv, cwd: Path, **kw) -> subprocess.CompletedProcess:
    fashion = ["--data", "/usr/share/datasets/fashion-mnist", "--alpha", "0.25", "--resolution", "32", "--grayscale",
               "--train-subset", "512", "--val-subset", "256", "--batch-size", "64", "--workers", "0", "--quiet",
               "--precision", "fp32"]  # fmt: skip
    return cli("train", *argv, *fashion, cwd=cwd, **kw)


@pytest.fixture(scope="module")
def run(work) -> Path:
    """A finished training run (two short epochs on real Fashion-MNIST images)."""
    result = _train("--out", work / "run", "--epochs", "2", "--max-steps-per-epoch", "3", cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    return work / "run"


def test_train_refuses_a_directory_of_someone_elses_files(work):
    other = work / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"mine")
    before = snapshot(other)
    assert_one_line(_train("--out", other, "--epochs", "1", cwd=work), 2, str(other), "is not empty", "--overwrite")
    assert snapshot(other) == before


def test_train_refuses_a_finished_run_and_leaves_it_intact(work, run):
    before = snapshot(run)
    assert_one_line(_train("--out", run, "--epochs", "1", cwd=work), 2, str(run), "already holds a training run")
    assert snapshot(run) == before


def test_convert_and_export_refuse_to_write_over_a_run(work, run):
    before = snapshot(run)
    assert_one_line(cli("convert", work / "model", "-o", run, cwd=work), 2, str(run), "holds a training run")
    result = cli("export", work / "model", "--format", "onnx", "-o", run / "model.safetensors", cwd=work)
    assert_one_line(result, 2, "model.safetensors", "file of the training run")
    assert_one_line(cli("export", work / "model", "--format", "onnx", "-o", run, cwd=work), 2, "is a directory")
    assert snapshot(run) == before


def test_resume_of_a_converted_model_is_one_line(work):
    before = snapshot(work / "model")
    assert_one_line(cli("train", "--resume", work / "model", cwd=work), 2, "no training run to resume")
    assert snapshot(work / "model") == before


def test_eval_into_a_read_only_place_fails_before_the_work(work, run):
    if os.geteuid() == 0:
        pytest.skip("root writes through read-only modes: the check cannot fail for root")
    (work / "ro").mkdir(exist_ok=True)
    (work / "ro").chmod(0o555)
    result = cli("eval", run, "--confusion", work / "ro" / "c.png", cwd=work)
    assert_one_line(result, 2, "c.png", "read-only")


def test_a_full_disk_is_one_line_and_leaves_no_temporary(work):
    out = work / "full"
    out.mkdir()
    result = cli("export", work / "model", "--format", "onnx", "-o", out / "m.onnx", cwd=work, fsize=64 << 10)
    assert_one_line(result, 2, "m.onnx")
    assert list(out.iterdir()) == []


def test_two_trainings_into_one_directory(work):
    """While a first training runs, a second into the same directory is refused (and a third with --overwrite, by
    the directory's lock); the first's files are complete and its own."""
    target = work / "shared"
    first = subprocess.Popen([sys.executable, "-m", "mobilenet_v1", "train", "--out", str(target), "--epochs", "3",
                              "--max-steps-per-epoch", "60", "--data", "/usr/share/datasets/fashion-mnist",
                              "--alpha", "0.5", "--resolution", "64", "--grayscale", "--train-subset", "8192",
                              "--val-subset", "256", "--batch-size", "64", "--workers", "0", "--quiet",
                              "--precision", "fp32", "--json"],
                             cwd=work, env={**os.environ, "MOBILENET_V1_CACHE": str(work / ".cache")},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (target / "config.json").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    second = _train("--out", target, "--epochs", "1", cwd=work)
    third = _train("--out", target, "--epochs", "1", "--overwrite", cwd=work)
    assert first.poll() is None, "the first training ended before the others tried: make it longer"
    assert_one_line(second, 2, str(target), "already holds a training run")
    assert_one_line(third, 2, str(target), "in use by a training process")
    out, err = first.communicate(timeout=900)
    assert first.returncode == 0, err[-2000:]
    assert json.loads(out)["epochs"] == 3
    metrics = (target / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 4  # header + the first training's three epochs, nothing of the others'


def test_ctrl_c_is_one_line_and_exit_130(work):
    args = ["--out", work / "interrupted", "--epochs", "50", "--data", "/usr/share/datasets/fashion-mnist",
            "--alpha", "0.25", "--resolution", "32", "--grayscale", "--workers", "0", "--quiet"]  # fmt: skip
    # a shell runs background jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored: restore it,
    # as a terminal's Ctrl-C finds it
    proc = subprocess.Popen([sys.executable, "-m", "mobilenet_v1", "train", *map(str, args)], cwd=work,
                            env={**os.environ, "MOBILENET_V1_CACHE": str(work / ".cache")},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(8)  # in start-up or in the first epoch: either must end the same way
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = err.strip().splitlines()
    assert proc.returncode == 130 and lines == ["mobilenet-v1 train: interrupted"], (proc.returncode, err[-2000:])


def test_a_killed_save_leaves_nothing_the_next_save_does_not_remove(work):
    target = work / "model_copy"
    target.mkdir()
    code = ("import os, sys\nfrom mobilenet_v1.files import atomic_path\nwith atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'x' * 1000)\n    os.kill(os.getpid(), 9)\n")  # fmt: skip
    subprocess.run([sys.executable, "-c", code, str(target / "model.onnx")])
    assert len(list(target.glob(".model.onnx.*.tmp"))) == 1
    result = cli("export", work / "model", "--format", "onnx", "-o", target / "model.onnx", cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [p.name for p in target.iterdir()] == ["model.onnx"]


def test_relabelled_fashion_mnist_is_not_served_from_a_stale_cache(work, monkeypatch):
    from mobilenet_v1.data import _fashion_mnist_root

    monkeypatch.setenv("MOBILENET_V1_CACHE", str(work / ".cache-fmnist"))
    src = work / "fmnist"
    src.mkdir()
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-labels-idx1-ubyte"):  # fmt: skip
        (src / f"{name}.gz").write_bytes(gzip.compress(name.encode()))
    first = _fashion_mnist_root(src)
    time.sleep(0.01)
    (src / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"relabelled"))
    second = _fashion_mnist_root(src)
    assert first != second
    assert (second / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte").read_bytes() == b"relabelled"
