"""The command line as a user runs it: exit codes, printed tables, written files."""

from __future__ import annotations

import json

from tvm_convadd.cli import main


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
    assert "total (8 layers)" in out and "(ok)" in out
    assert json.loads(trace.read_text())["traceEvents"]
    assert gantt.read_bytes()[:4] == b"\x89PNG"
    assert "A+B/N" in report.read_text()


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
    assert "8 of" in capsys.readouterr().out
