"""Hostile input, round two (issue 27): NPU targets (Vela's --system-config / --memory-mode, an unknown
SoC, options the target ignores) and `edgetl search` (--space files, --address, the Ray token, signals,
names, output folders, unusable data). Each fails in one line with its exit code before any work, or
works; no test trains a model."""

from __future__ import annotations

import http.server
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgetl.cli import main
from edgetl.errors import UsageError
from checks import one_line

REPO = Path(__file__).resolve().parents[1]


# -- Ethos-U: Vela's system configs and memory modes -----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_int8_tflite(tmp_path_factory) -> Path:
    """A two-layer full-integer TFLite with int8 I/O: what Vela compiles, in a fraction of a second."""
    import numpy as np
    import tensorflow as tf

    inputs = tf.keras.Input((16, 16, 3))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(tf.keras.layers.GlobalAveragePooling2D()(x)))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: ([rng.random((1, 16, 16, 3), np.float32)] for _ in range(4))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("vela") / "tiny_int8.tflite"
    path.write_bytes(converter.convert())
    return path


def test_every_documented_system_config_and_memory_mode_compiles(tiny_int8_tflite, tmp_path):
    """vela.ini is found although ``ethosu`` is a namespace package (``__file__`` None: the probe's
    traceback); each of its system configs compiles (with its family's memory mode), and each memory
    mode (with a DRAM system config); the estimate records what was used."""
    pytest.importorskip("ethosu.vela")
    from edgetl.exporting import vela

    choices = vela.ini_choices()
    assert "Ethos_U55_High_End_Embedded" in choices["system_config"] and "Shared_Sram" in choices["memory_mode"]
    # 11 compiles cover all 17 names: each system config once, the memory modes spread over them (the
    # dedicated-SRAM modes over the configs with DRAM on AXI1, as Vela requires), one with none given.
    dram = [c for c in choices["system_config"] if "DRAM" in c or c.startswith("Ethos_U65_") and "Embedded" not in c]
    modes = dict(zip(dram, itertools.cycle([m for m in choices["memory_mode"] if "Dedicated" in m])))
    flash = [c for c in choices["system_config"] if c not in dram]
    modes.update(zip(flash, itertools.cycle(["Sram_Only", "Shared_Sram", None])))
    assert set(modes) == set(choices["system_config"]) and set(modes.values()) >= {*choices["memory_mode"], None}
    pairs = [("ethos-u55-256" if "U55" in c else "ethos-u65-256" if "U65" in c else "ethos-u85-256", c, m)
             for c, m in modes.items()]
    for i, (accelerator, config, mode) in enumerate(pairs):
        system_config, memory_mode = vela.resolve_options(accelerator, config, mode)
        compiled = vela.compile(tiny_int8_tflite, tmp_path / str(i), accelerator, config, mode)
        assert compiled["estimate"]["system_config"] == system_config == config
        assert compiled["estimate"]["memory_mode"] == memory_mode
        assert compiled["placement"]["cpu_ops"] == 0 and compiled["estimate"]["inference_ms"] > 0
    assert vela.resolve_options("ethos-u85-256", None, "Sram_Only") == ("Ethos_U85_SYS_DRAM_Mid", "Sram_Only")
    assert vela.resolve_options("ethos-u55-128", None, None) == (None, None)  # Vela's internal defaults
    with pytest.raises(UsageError, match=r"unknown --system-config 'X'; Vela's vela.ini defines: Ethos_U55_Deep"):
        vela.resolve_options("ethos-u55-256", "X", None)
    with pytest.raises(UsageError, match=r"unknown --memory-mode 'fast'"):
        vela.resolve_options("ethos-u55-256", None, "fast")
    # the pairs Vela refuses ("arena_mem_area=OffChipFlash (must be Sram or Dram)"): refused up front
    with pytest.raises(UsageError, match=r"--memory-mode Dedicated_Sram puts the tensor arena on AXI1, which "
                                         r"--system-config Ethos_U55_High_End_Embedded wires to OffChipFlash"):
        vela.resolve_options("ethos-u55-256", None, "Dedicated_Sram")


@pytest.mark.parametrize("args,code,message", [
    (["--target", "npu:ethos-u55-256", "--system-config", "X"], 2, "unknown --system-config 'X'; Vela's vela.ini"),
    (["--target", "npu:ethos-u55-256", "--memory-mode", "Y"], 2, "unknown --memory-mode 'Y'"),
    (["--target", "npu:qnn-htp", "--soc", "99999"], 2,
     "unknown SoC --soc '99999'; known: SM8850 (Snapdragon 8 Elite Gen 5), SM8750 (Snapdragon 8 Elite)"),
    (["--target", "npu:qnn-htp", "--qnn-scheme", "u4"], 2, "unknown --qnn-scheme 'u4'; choose from edgetl"),
])
def test_target_options_fail_in_one_line_before_tensorflow(args, code, message, runtime_model_dir, sample_subset,
                                                           tmp_path, capsys):
    if "npu:ethos-u55-256" in args:
        pytest.importorskip("ethosu.vela")
    out = tmp_path / "out"
    assert main(["export", str(runtime_model_dir), "--out", str(out), "--calib", str(sample_subset(2)), *args]) == code
    err = one_line(capsys.readouterr().err)
    assert message in err and not out.exists()


def test_options_the_target_ignores_are_a_warning_line(runtime_model_dir, tmp_path, capsys):
    from edgetl.exporting import ExportConfig
    from edgetl.targets.options import check_export_options

    def warnings(**options) -> list[str]:
        check_export_options(ExportConfig(model=runtime_model_dir, out=tmp_path / "out", **options))
        return capsys.readouterr().err.strip().splitlines()

    assert warnings(soc="SM8650") == ["edgetl: warning: --soc SM8650 is ignored: only --target npu:qnn-htp compiles "
                                      "for a Snapdragon SoC (target here: cpu (--format))"]
    assert warnings(target="npu:ethos-u55-256", soc="SM8650") == [
        "edgetl: warning: --soc SM8650 is ignored: only --target npu:qnn-htp compiles for a Snapdragon SoC "
        "(target here: npu:ethos-u55-256)"]
    assert warnings(target="npu:qnn-htp", system_config="Ethos_U55_High_End_Embedded", memory_mode="Sram_Only") == [
        "edgetl: warning: --system-config Ethos_U55_High_End_Embedded and --memory-mode Sram_Only ignored: Vela "
        "options are for --target npu:ethos-u* (target here: npu:qnn-htp)"]
    assert warnings(qnn_scheme="u8u8", allow_cpu_fallback=True) == [
        "edgetl: warning: --qnn-scheme u8u8 is ignored: it is for --target npu:qnn-htp (target here: cpu (--format))",
        "edgetl: warning: --allow-cpu-fallback is ignored: it is for NPU targets (target here: cpu (--format))"]
    assert warnings(target="npu:qnn-htp", soc="sm8650") == []  # used: no warning, the name in any case


# -- search: before Ray starts -----------------------------------------------------------------------------
def _search(data: Path, out: Path, *extra: str) -> int:
    return main(["search", str(data), "--out", str(out), "--weights", "none", "--epochs", "1", *extra])


def test_search_space_files_are_small_regular_json(sample_subset, tmp_path, capsys):
    data, out = sample_subset(2), tmp_path / "out"
    fifo = tmp_path / "space.fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as handle:  # sparse: 2 MB that cost nothing
        handle.truncate(2 << 20)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    (tmp_path / "adir").mkdir()
    for space, message in (("/dev/zero", "--space /dev/zero is not a regular file (a FIFO, device or folder)"),
                           (fifo, f"--space {fifo} is not a regular file"),
                           (tmp_path / "adir", f"--space {tmp_path / 'adir'} is not a regular file"),
                           (huge, f"--space {huge} is 2097152 bytes; a search space file is at most 1024 KiB"),
                           (deep, f"--space {deep} is not valid JSON (nested too deeply)")):
        started = time.monotonic()
        assert _search(data, out, "--space", str(space)) == 2
        assert message in one_line(capsys.readouterr().err) and time.monotonic() - started < 10
    assert not out.exists()


def test_search_names_targets_outputs_and_data_before_ray(sample_subset, runtime_model_dir, tmp_path, capsys):
    from edgetl import targets
    from edgetl.metadata import OUTPUT_MARKER, output_marker, write_json

    data, out = sample_subset(5), tmp_path / "out"
    assert _search(data, out, "--backbones", "efficientnet_lite0,nosuchnet") == 2
    assert "unknown backbone 'nosuchnet'; choose one of: efficientnet_b0" in one_line(capsys.readouterr().err)
    missing = next((n for n in ("gpu:cuda", "npu:intel") if not targets.get(n).availability().available), None)
    if missing:  # a target this machine has no device for, and no other: exit 3 naming it
        assert _search(data, out, "--target", missing) == 3
        assert f"edgetl: error: {missing} is not available here" in one_line(capsys.readouterr().err)
    # the output of another verb is refused as every verb refuses an output that is not its own
    model = tmp_path / "model"
    shutil.copytree(runtime_model_dir, model)
    for what, folder in (("a model (edgetl.json)", model), ("the output of `edgetl bench`", tmp_path / "bench")):
        folder.mkdir(exist_ok=True)
        if folder.name == "bench":
            write_json(folder / OUTPUT_MARKER, output_marker("bench"))
            (folder / "bench.json").write_text("{}")
        before = sorted(p.name for p in folder.iterdir())
        assert _search(data, folder) == 2
        err = one_line(capsys.readouterr().err)
        assert f"--out {folder} holds {what}, not a search's" in err, err
        assert sorted(p.name for p in folder.iterdir()) == before
    # unusable images, one class: exit 2 and no --out left behind
    corrupt, single = tmp_path / "corrupt", tmp_path / "single"
    for cls in ("ants", "bees"):
        (corrupt / cls).mkdir(parents=True)
        for i in range(3):
            (corrupt / cls / f"{i}.jpg").write_bytes(b"not a jpeg")
    (single / "ants").mkdir(parents=True)
    for src in sorted((data / "ants").iterdir()):
        (single / "ants" / src.name).write_bytes(src.read_bytes())
    for folder, message in ((corrupt, "class folder(s) with no usable image"), (single, "needs at least two class")):
        assert _search(folder, out) == 2
        assert message in one_line(capsys.readouterr().err) and not out.exists()


def test_search_address_of_another_server_is_one_line_in_seconds(sample_subset, tmp_path, capsys):
    """The probe's hang: --address pointing at a server that is not Ray (here an HTTP server)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        started = time.monotonic()
        assert _search(sample_subset(5), tmp_path / "out", "--address", address) == 2
        seconds = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    err = one_line(capsys.readouterr().err)
    assert f"--address {address}: a server answers there but it is not a Ray head" in err
    assert seconds < 15 and not (tmp_path / "out").exists()


def test_ray_auth_token_discovery(tmp_path, monkeypatch):
    """Ray 2.60: a plain `ray start --head` may turn token auth on; the driver uses a token only with
    RAY_AUTH_MODE=token. edgetl finds the token where Ray looks (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token) and sets the mode for its session; a head that needs one with none found is one
    line naming the variables."""
    from edgetl.search import joining

    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    assert joining.find_token() is None
    with joining.use_token() as source:
        assert source is None and "RAY_AUTH_MODE" not in os.environ
    with pytest.raises(UsageError, match=r"^--address h:1: the Ray cluster requires an auth token and none was "
                                         r"found: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"):
        joining.check_token("h:1", None)
    (home / ".ray" / "auth_token").write_text("abc123\n")  # what `ray start --head` writes
    assert joining.find_token() == str(home / ".ray" / "auth_token")
    with joining.use_token() as source:
        assert source == str(home / ".ray" / "auth_token") and os.environ["RAY_AUTH_MODE"] == "token"
    assert "RAY_AUTH_MODE" not in os.environ  # restored
    token_file = tmp_path / "token"
    token_file.write_text("def456")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert joining.find_token() == f"RAY_AUTH_TOKEN_PATH ({token_file})"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "nothing"))
    with pytest.raises(UsageError, match=r"RAY_AUTH_TOKEN_PATH=.*nothing: no token there"):
        joining.find_token()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "xyz")  # the variable comes first, as in Ray
    assert joining.find_token() == "RAY_AUTH_TOKEN"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # set by the user: kept, and named when it is in the way
    with joining.use_token():
        assert os.environ["RAY_AUTH_MODE"] == "disabled"
    with pytest.raises(UsageError, match="requires an auth token but RAY_AUTH_MODE is 'disabled' here"):
        joining.check_token("h:1", "RAY_AUTH_TOKEN")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_search_sigterm_exits_143_withone_line(sample_subset, tmp_path):
    """SIGTERM while Ray runs the fine-tunes: ray.init replaced edgetl's handler (exit 1, no message) and
    Ray's native signal check wraps the exception in a SystemError. Now: 143 with the line `export`
    prints, and the stages already written stay (a rerun resumes)."""
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "edgetl", "search", str(sample_subset(5)), "--out", str(out),
                                "--weights", "none", "--epochs", "3", "--quantize", "fp32"], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "stages").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # --out/stages appears once Ray is up and the split is written
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert one_line(err) == "edgetl: terminated (SIGTERM); nothing half-written was left"


def test_ctrl_c_exits_130_withone_line(cnn_artifacts):
    """Ctrl-C: typer turns it into Exit(130), which click returns (non-standalone mode) instead of raising,
    so edgetl exited 130 without a word (search, and every other verb). Here predict blocks reading an
    image from a pipe that never ends, and SIGINT arrives there."""
    process = subprocess.Popen([sys.executable, "-m", "edgetl", "predict", str(cnn_artifacts.paths["onnx"]),
                                "/dev/stdin"], env=_env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wchan = Path(f"/proc/{process.pid}/wchan")
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if "pipe" in wchan.read_text():  # blocked in read() on the pipe: the model is loaded, the image is next
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert one_line(err) == "edgetl: interrupted; nothing half-written was left"


def test_qat_graph_keeps_ops_called_with_constants():
    """`export --qat-epochs` on mobilenet_v3_small died in ``Add.compute_output_spec``: the QAT rebuild
    called ``x + 3.0`` with x alone, and Keras marks ``x * (1 / 6)`` sparse, which the fake-quant op
    cannot trace. The hard-swish and squeeze-excite pattern of MobileNetV3, in a model of a few layers:
    rebuilt with its constants, it computes what the float model computes, to 8-bit precision."""
    import keras
    import numpy as np

    from edgetl.exporting.qat import build_qat_graph

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs))
    x = x * (keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0))  # hard swish
    squeeze = keras.layers.Conv2D(8, 1)(keras.layers.GlobalAveragePooling2D(keepdims=True)(x))
    x = keras.layers.Multiply()([x, keras.layers.ReLU(6.0)(squeeze + 3.0) * (1.0 / 6.0)])  # squeeze-excite
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    calib = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype(np.float32)
    graph = build_qat_graph(model, calib, batch=4)
    assert graph.folded == 1 and len(graph.quantizers) >= 6
    expected, got = model.predict_on_batch(calib), graph.model.predict_on_batch(calib)
    cosine = (expected * got).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() > 0.99 and (expected.argmax(1) == got.argmax(1)).mean() >= 0.75
