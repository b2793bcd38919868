"""The command line as a user runs it: exit codes, printed tables, written files."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from tvm_convadd import cli
from tvm_convadd.cli import main
from tvm_convadd.errors import ConvAddError
from tvm_convadd.networks import get_network


def test_demo_shows_ping_pong_and_checks_numbers(capsys):
    assert main(["demo", "--tiles", "4"]) == 0
    out = capsys.readouterr().out
    assert "alloc_buffer((2," in out.replace(" ", "")  # the two-slot accumulator
    assert "software_pipeline_stage" in out
    assert "CONV" in out and "ADD" in out
    assert out.rstrip().endswith("OK")


def test_run_small_network_with_check_and_artefacts(tmp_path, capsys):
    trace, gantt, report = tmp_path / "t.json", tmp_path / "g.png", tmp_path / "r.txt"
    code = main(
        [
            "run",
            "resnet18",
            "--image-size",
            "32",
            "--width",
            "0.125",
            "--tiles",
            "2",
            "--check",
            "--trace",
            str(trace),
            "--gantt",
            str(gantt),
            "--report",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "total (21 layers)" in out and "(ok)" in out  # 20 convs and the classifier
    assert json.loads(trace.read_text())["traceEvents"]
    assert gantt.read_bytes()[:4] == b"\x89PNG"
    assert "A+B/N" in report.read_text()


def test_run_with_the_baseline_and_the_timeline(capsys):
    """--baseline adds the unfused columns and what the baseline ran; --timeline the network
    on one accelerator timeline, no slower than its layers one after another."""
    args = ["run", "resnet18", "--image-size", "32", "--width", "0.125", "--timing-only"]
    assert main([*args, "--baseline", "--timeline"]) == 0
    out = capsys.readouterr().out
    assert "unfused" in out and "per-op" in out
    match = re.search(r"network: (\d+) cycles on one timeline, (\d+) layer by layer", out)
    assert match and int(match[1]) <= int(match[2])


def test_bad_input_exits_2_with_a_message(capsys, tmp_path):
    assert main(["run", "nosuchnet"]) == 2
    assert "unknown network 'nosuchnet'" in capsys.readouterr().err
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    assert main(["run", str(broken)]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err


def test_explain_and_targets(capsys):
    assert main(["targets"]) == 0
    assert "convadd-sim-ideal" in capsys.readouterr().out
    assert main(["explain", "resnet18", "--image-size", "32", "--width", "0.125"]) == 0
    assert "21 of 21 conv2d fused" in capsys.readouterr().out  # the classifier as a 1x1 conv


# -- bad input: one line naming the problem and the fix, exit code 2, nothing run ------------


def parse_error(capsys, argv: list[str]) -> str:
    """argparse's exit 2 and its error line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def error_line(capsys, argv: list[str]) -> str:
    """main's exit 2 and its one `tvm-convadd: ...` line (after any cleared progress bar)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip()
    return err.splitlines()[-1]


@pytest.fixture
def nothing_is_built(monkeypatch):
    """Fail if the command gets as far as loading the model: the checks must come first."""

    def refuse(_args):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "_load_model", refuse)


@pytest.mark.parametrize("width", ["nan", "inf", "-inf", "0", "-1", "5", "abc"])
def test_width_outside_0_to_4_is_refused(width, capsys):
    line = parse_error(capsys, ["explain", "resnet18", f"--width={width}"])
    assert f"--width {width!r}: use a channel multiplier in (0, 4]" in line


@pytest.mark.parametrize("width", [float("nan"), float("inf"), 0, -1, 5.0, True])
def test_networks_refuse_a_bad_width(width):
    with pytest.raises(ConvAddError, match=r"channel multiplier must be a number in \(0, 4\]"):
        get_network("resnet18", image_size=32, width=width)


def test_output_files_are_checked_before_the_run(tmp_path, capsys, nothing_is_built):
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    run = ["run", "resnet18"]
    line = error_line(capsys, [*run, "--trace", str(tmp_path / "missing" / "t.json")])
    assert "does not exist; create it first (mkdir -p" in line
    line = error_line(capsys, [*run, "--report", str(a_file / "r.txt")])
    assert "is a file, not a directory" in line
    line = error_line(capsys, [*run, "--gantt", str(tmp_path)])
    assert "is a directory; give a file path in it" in line
    line = error_line(capsys, [*run, "--gantt", str(tmp_path / "g.xyz")])
    assert "matplotlib cannot write '.xyz' files; end the name in .png" in line
    same = str(tmp_path / "same.txt")
    line = error_line(capsys, [*run, "--trace", same, "--report", same])
    assert "--trace and --report both write" in line
    line = error_line(capsys, [*run, "--report", ""])
    assert "--report '': give a file name" in line
    line = error_line(capsys, [*run, "--records", str(tmp_path / "no-records")])
    assert "no such directory" in line
    assert a_file.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_output_into_a_read_only_directory_is_refused_before_the_run(
    tmp_path, capsys, nothing_is_built
):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = error_line(capsys, ["run", "resnet18", "--report", str(locked / "r.txt")])
        assert "cannot create files in" in line and "pick a writable directory" in line
        line = error_line(capsys, ["tune", "resnet18", "--records", str(locked / "records")])
        assert "cannot create files in" in line
    finally:
        locked.chmod(0o700)


def test_tune_records_directory_is_checked_before_tuning(tmp_path, capsys, nothing_is_built):
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    line = error_line(capsys, ["tune", "resnet18", "--records", str(a_file)])
    assert "is a file; give a directory for the records" in line
    line = error_line(capsys, ["tune", "resnet18", "--records", str(a_file / "deeper" / "dir")])
    assert "is a file, not a directory" in line
    (tmp_path / "recs" / "records.jsonl").mkdir(parents=True)
    line = error_line(capsys, ["tune", "resnet18", "--records", str(tmp_path / "recs")])
    assert "records.jsonl' is a directory" in line
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("trials", ["0", "-3", "many"])
def test_tune_needs_at_least_one_trial(trials, capsys):
    line = parse_error(capsys, ["tune", "resnet18", "--trials", trials])
    assert f"--trials {trials!r}: use an integer >= 1" in line


@pytest.mark.parametrize("tiles", [str(10**9), "15", "0"])
def test_demo_tiles_outside_the_block_name_the_range(tiles, capsys):
    assert main(["demo", "--tiles", tiles]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before any step is printed
    assert f"tile count {int(tiles)}:" in captured.err
    assert "has 14 rows to tile along height; use --tiles 1 to 14" in captured.err


def dynamic_batch_onnx(path, batch="batch", channels=4, size=8):
    """conv3x3 -> relu -> conv3x3 -> + x, whose input's batch dim is symbolic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(
            (rng.standard_normal((channels, channels, 3, 3)) * 0.2).astype("float32"), f"w{i}"
        )
        for i in (1, 2)
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1] * 4),
        helper.make_node("Add", ["c2", "x"], ["y"]),
    ]
    dims = [batch, channels, size, size]
    graph = helper.make_graph(
        nodes,
        "dynamic_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        initializer=weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


def test_onnx_dynamic_batch_needs_input_shape(tmp_path, capsys):
    model = dynamic_batch_onnx(tmp_path / "dyn.onnx")
    records = ["--records", str(tmp_path / "records")]
    for argv in (["run", model], ["explain", model], ["tune", model, *records]):
        line = error_line(capsys, argv)
        assert line == (
            "tvm-convadd: ONNX input 'x' has dynamic dims [batch, 4, 8, 8]: give it a static "
            "shape with --input-shape x:1x4x8x8 (from Python: from_onnx(..., "
            "shape_dict={'x': [...]}))"
        )
    assert main(["explain", model, "--input-shape", "x:1x4x8x8"]) == 0
    assert "2 of 2 conv2d fused" in capsys.readouterr().out  # conv + relu, conv + residual
    assert main(["run", model, "--input-shape", "x:2x4x8x8", "--check"]) == 0
    out = capsys.readouterr().out
    assert "output shape (2, 4, 8, 8)" in out and "(ok)" in out


def test_onnx_input_shape_must_fit_the_model(tmp_path, capsys):
    model = dynamic_batch_onnx(tmp_path / "dyn.onnx")
    explain = ["explain", model, "--input-shape"]
    line = error_line(capsys, [*explain, "y:1x4x8x8"])
    assert "input shape for 'y': the model has no such input; its inputs are ['x']" in line
    line = error_line(capsys, [*explain, "x:1x4x8"])
    assert "the input has 4 dims [batch, 4, 8, 8]; give 4" in line
    line = error_line(capsys, [*explain, "x:1x5x8x8"])
    assert "dim 1 is fixed at 4 in the model [batch, 4, 8, 8]" in line
    line = error_line(capsys, [*explain, "x:1x4x8x8", "--input-shape", "x:2x4x8x8"])
    assert "--input-shape given twice for ['x']" in line
    for bad in ("x", "x:1x4x8x0", "x:1x4xx8", ":1x4x8x8"):
        line = parse_error(capsys, [*explain, bad])
        assert f"--input-shape {bad!r}: write NAME:DIMS" in line
    line = error_line(capsys, ["explain", model, "--width", "0.5"])
    assert "--width is for the built-in networks, an ONNX model has its own shape" in line
    line = error_line(capsys, ["explain", "resnet18", "--input-shape", "x:1x3x32x32"])
    assert "--input-shape binds the inputs of an ONNX model" in line


def test_a_directory_named_like_an_onnx_file(tmp_path, capsys):
    (tmp_path / "x.onnx").mkdir()
    line = error_line(capsys, ["explain", str(tmp_path / "x.onnx")])
    assert "is a directory: give the .onnx file in it" in line
    line = error_line(capsys, ["explain", str(tmp_path / "missing.onnx")])
    assert "does not exist" in line
