"""The `tvm-convadd` command line: demo, run, tune, explain, targets."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tvm

from tvm_convadd.errors import ConvAddError


def _tiles(value: str) -> str | int:
    if value in ("auto", "heuristic"):
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(
            f"--tiles {value!r}: use 'auto', 'heuristic' or an integer >= 1"
        )
    return int(value)


def _width(value: str) -> float:
    from tvm_convadd.networks import MAX_WIDTH

    try:
        width = float(value)
    except ValueError:
        width = math.nan
    if not 0 < width <= MAX_WIDTH:  # nan and inf fail too
        raise argparse.ArgumentTypeError(
            f"--width {value!r}: use a channel multiplier in (0, {MAX_WIDTH:g}], e.g. 0.25"
        )
    return width


def _positive(option: str):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise argparse.ArgumentTypeError(f"{option} {value!r}: use an integer >= 1")
        return number

    return parse


def _input_shape(value: str) -> tuple[str, list[int]]:
    """NAME:1x3x224x224 -> ("NAME", [1, 3, 224, 224]); the name may itself contain ':'."""
    name, sep, dims = value.rpartition(":")
    parts = dims.lower().split("x")
    if not sep or not name or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(
            f"--input-shape {value!r}: write NAME:DIMS with dims >= 1 joined by x, "
            "e.g. input:1x3x224x224"
        )
    return name, [int(p) for p in parts]


def _is_onnx(model: str) -> bool:
    return model.lower().endswith(".onnx")


def _load_model(args) -> tuple:
    """A built-in network by name, or an ONNX file by path: (mod, params, shape of the first
    input, the input vars)."""
    from tvm_convadd import networks

    if _is_onnx(args.model):
        from tvm_convadd.frontends import from_onnx

        given = [
            f"--{o}"
            for o in ("image-size", "width")
            if getattr(args, o.replace("-", "_")) is not None
        ]
        if given:
            are, it = ("are", "them") if len(given) > 1 else ("is", "it")
            raise ConvAddError(
                f"{' and '.join(given)} {are} for the built-in networks, an ONNX model has its "
                f"own shape: drop {it} (bind dynamic dims with --input-shape NAME:1x3x224x224)"
            )
        shapes = dict(args.input_shape)
        if len(shapes) != len(args.input_shape):
            names = [name for name, _ in args.input_shape]
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ConvAddError(f"--input-shape given twice for {twice}: give each input once")
        mod, params = from_onnx(args.model, shapes or None, require_static=True)
    else:
        if args.input_shape:
            raise ConvAddError(
                "--input-shape binds the inputs of an ONNX model; the built-in networks take "
                "--image-size (and --width)"
            )
        image_size = 224 if args.image_size is None else args.image_size
        width = 1.0 if args.width is None else args.width
        mod, params = networks.get_network(args.model, image_size=image_size, width=width)
    main = mod["main"]
    num_input = main.attrs.get("num_input") if main.attrs else None
    inputs = list(main.params)[: int(num_input) if num_input is not None else None]
    if not inputs:
        raise ConvAddError(f"{args.model} has no input: tvm-convadd needs a model that takes one")
    dims = list(inputs[0].ty.shape.values)
    if not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        raise ConvAddError(
            f"input {inputs[0].name_hint!r} of {args.model} has dynamic dims {dims}: bind them "
            f"with --input-shape {inputs[0].name_hint}:1x3x224x224"
        )
    shape = [int(d) for d in dims]
    return mod, params, shape, inputs


def _check_single_float_input(model: str, inputs: list) -> str:
    """The dtype of a model's one input; run feeds it a random image, so one float input."""
    if len(inputs) != 1:
        names = [var.name_hint for var in inputs]
        raise ConvAddError(
            f"{model} has {len(inputs)} inputs {names}: tvm-convadd run feeds one image, so "
            "give a model with one input (explain and tune take any)"
        )
    dtype = str(inputs[0].ty.dtype)
    if not dtype.startswith("float"):
        raise ConvAddError(
            f"input {inputs[0].name_hint!r} of {model} is {dtype}: tvm-convadd run feeds a "
            "random float image, so give a model whose input is a float tensor"
        )
    return dtype


def _cannot_create_in(directory: Path) -> str | None:
    """None if a file can be created in `directory` (tried for real), else the OS's reason."""
    try:
        handle, name = tempfile.mkstemp(prefix=".tvm-convadd-probe-", dir=directory)
    except OSError as err:
        return err.strerror or str(err)
    os.close(handle)
    os.unlink(name)
    return None


def _check_output_file(option: str, value: str) -> Path:
    """An output file `option` will write after the run: fail now, not after the run."""
    if not value:
        raise ConvAddError(f"{option} '': give a file name")
    path = Path(value)
    if value.endswith(("/", os.sep)) or path.is_dir():
        raise ConvAddError(f"{option} {value!r}: is a directory; give a file path in it")
    parent = path.parent
    if not parent.exists():
        raise ConvAddError(
            f"{option} {value}: directory {str(parent)!r} does not exist; create it first "
            f"(mkdir -p {parent}) or pick another path"
        )
    if not parent.is_dir():
        raise ConvAddError(f"{option} {value}: {str(parent)!r} is a file, not a directory")
    if path.exists():
        try:
            open(path, "ab").close()  # appends nothing: the file keeps its contents until the run
        except OSError as err:
            raise ConvAddError(
                f"{option} {value}: cannot write it ({err.strerror or err}); pick a writable path"
            ) from err
    else:
        reason = _cannot_create_in(parent)
        if reason is not None:
            raise ConvAddError(
                f"{option} {value}: cannot create files in {str(parent)!r} ({reason}); pick a "
                "writable directory"
            )
    return path


def _check_gantt_format(value: str) -> None:
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(value).suffix.lower().lstrip(".")
    if suffix not in formats:
        shown = f"'.{suffix}' files" if suffix else "a file without an extension"
        raise ConvAddError(
            f"--gantt {value}: matplotlib cannot write {shown}; end the name in .png, .pdf "
            f"or .svg (any of {', '.join('.' + f for f in sorted(formats))})"
        )


def _check_run_outputs(args) -> None:
    """--trace/--gantt/--report and --records, checked before anything is compiled."""
    seen: dict[Path, str] = {}
    for option in ("--trace", "--gantt", "--report"):
        value = getattr(args, option[2:])
        if value is None:
            continue
        path = _check_output_file(option, value).resolve()
        if option == "--gantt":
            _check_gantt_format(value)
        if path in seen:
            raise ConvAddError(
                f"{seen[path]} and {option} both write {value}: give each its own file"
            )
        seen[path] = option
    for directory in args.records:
        path = Path(directory)
        if not path.exists():
            raise ConvAddError(
                f"--records {directory}: no such directory; give one that "
                "`tvm-convadd tune --records DIR` wrote"
            )
        if not path.is_dir():
            raise ConvAddError(f"--records {directory}: is a file; give the directory it is in")


def _check_records_dir(value: str) -> None:
    """tune --records: a directory tuning can create (or already has) and append to."""
    from tvm_convadd.records import RECORDS_FILE

    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ConvAddError(f"--records {value}: is a file; give a directory for the records")
    if path.is_dir():
        records_file = path / RECORDS_FILE
        if records_file.is_dir():
            raise ConvAddError(
                f"--records {value}: {str(records_file)!r} is a directory; move it away"
            )
        try:
            if records_file.exists():
                open(records_file, "ab").close()  # tuning appends; nothing is written now
        except OSError as err:
            raise ConvAddError(
                f"--records {value}: cannot append to {str(records_file)!r} "
                f"({err.strerror or err}); pick a writable directory"
            ) from err
        where = path
    else:
        where = next(parent for parent in path.absolute().parents if parent.exists())
        if not where.is_dir():
            raise ConvAddError(f"--records {value}: {str(where)!r} is a file, not a directory")
    reason = _cannot_create_in(where)
    if reason is not None:
        raise ConvAddError(
            f"--records {value}: cannot create files in {str(where)!r} ({reason}); pick a "
            "writable directory"
        )


def cmd_run(args) -> int:
    from tqdm import tqdm

    _check_run_outputs(args)
    steps = tqdm(total=3, desc="tvm-convadd", unit="step", file=sys.stderr)
    try:
        return _run(args, steps)
    except BaseException:
        steps.leave = False  # the error message alone, not a half-done progress bar
        steps.close()
        raise


def _run(args, steps) -> int:
    import tvm_convadd
    from tvm_convadd.report import network_report
    from tvm_convadd.target import trace

    steps.set_postfix_str(f"loading {args.model}")
    mod, params, shape, inputs = _load_model(args)
    dtype = _check_single_float_input(args.model, inputs)
    steps.update()
    steps.set_postfix_str(f"building for {args.target} + llvm")
    started = time.perf_counter()
    net = tvm_convadd.build(
        mod,
        target=args.target,
        params=params,
        tiles=args.tiles,
        axis=args.axis,
        pipeline=args.pipeline,
        records=args.records,
        functional=not args.timing_only,
    )
    compiled = time.perf_counter() - started
    steps.update()
    steps.set_postfix_str(
        f"running ({net.num_offloaded} fused layers, {net.num_kernels} kernels, on the simulator)"
    )
    image = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    started = time.perf_counter()
    out = net.run(image)
    ran = time.perf_counter() - started
    steps.update()
    steps.close()
    report = network_report(net.session, baseline=args.baseline)
    print(report.table())
    if args.baseline:
        print(report.baseline_table())
    if args.timeline:
        from tvm_convadd.target.timeline import network_timeline_of

        print(network_timeline_of(net.session).summary())
    print(f"output shape {tuple(out.shape)}; compile {compiled:.1f} s, run {ran:.1f} s (wall)")
    if args.check:
        reference = tvm_convadd.build_reference(mod, params)(image)
        error = float(np.abs(out - reference).max())
        scale = float(np.abs(reference).max()) or 1.0
        ok = np.allclose(out, reference, rtol=1e-3, atol=1e-3 * scale)
        verdict = "ok" if ok else "MISMATCH"
        print(f"check against the pure-llvm build: max abs error {error:.3g} ({verdict})")
        if not ok:
            return 1
    if args.trace:
        trace.write_session_trace(net.session, args.trace)
        print(f"Chrome trace (open in Perfetto): {args.trace}")
    if args.gantt:
        trace.plot_session_gantt(net.session, args.gantt)
        print(f"Gantt chart: {args.gantt}")
    if args.report:
        Path(args.report).write_text(report.table() + "\n")
        print(f"report: {args.report}")
    return 0


def cmd_explain(args) -> int:
    from tvm_convadd.partition import explain, format_explanation, prepare

    mod, params, _, _ = _load_model(args)
    print(format_explanation(explain(prepare(mod, params))))
    return 0


def cmd_targets(_args) -> int:
    from tvm_convadd.target.registry import describe_targets

    print(describe_targets())
    return 0


def _tune_command(args) -> str:
    """The command that resumes this tune: the records already in --records are not re-run."""
    import shlex

    argv = ["tvm-convadd", "tune", args.model, "--trials", str(args.trials)]
    argv += ["--records", args.records_dir, "--target", args.target]
    for option in ("image_size", "width"):
        if getattr(args, option) is not None:
            argv += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    for name, dims in args.input_shape:
        argv += ["--input-shape", f"{name}:{'x'.join(map(str, dims))}"]
    if args.tracker is not None:
        argv += ["--tracker", args.tracker, "--key", args.key or "convadd-sim"]
        if args.tracker_timeout is not None:
            argv += ["--tracker-timeout", f"{args.tracker_timeout:g}"]
    return shlex.join(argv)


def _remote_runner(args):
    """--tracker/--key/--tracker-timeout as a RemoteRunner (None: measure locally), checked
    against the tracker now, before the model is loaded."""
    from tvm_convadd import rpc

    if args.tracker is None:
        if args.key is not None or args.tracker_timeout is not None:
            given = "--key" if args.key is not None else "--tracker-timeout"
            raise ConvAddError(f"{given} is for remote measurement: give --tracker HOST:PORT too")
        return None
    runner = rpc.RemoteRunner.parse(
        args.tracker,
        args.key or rpc.DEFAULT_KEY,
        rpc.DEFAULT_TIMEOUT if args.tracker_timeout is None else args.tracker_timeout,
    )
    servers = rpc.server_count(runner)
    print(f"measuring on {servers} server(s) of tracker {runner.address}, key {runner.key!r}")
    return runner


def cmd_tune(args) -> int:
    from tvm_convadd.partition import PartitionConvAdd, fused_functions, prepare
    from tvm_convadd.tuner import TuneInterrupted, tune_workloads

    _check_records_dir(args.records_dir)
    runner = _remote_runner(args)
    mod, params, _, _ = _load_model(args)
    fused = fused_functions(PartitionConvAdd()(prepare(mod, params)))
    workloads = list(dict.fromkeys(f.workload for f in fused.values()))
    if not workloads:
        print(f"nothing to tune: {args.model} has no conv2d + add the accelerator can take")
        return 0
    print(
        f"tuning {len(workloads)} distinct fused conv+add layers of {args.model} "
        f"for {args.target}, {args.trials} trials each, records in {args.records_dir}"
    )
    try:
        results = tune_workloads(
            workloads,
            target=args.target,
            trials=args.trials,
            records_dir=args.records_dir,
            runner=runner,
        )
    except TuneInterrupted as stop:
        print(
            f"tvm-convadd: interrupted; {stop.measured} new measurement(s) kept in "
            f"{stop.records_path}; resume with: {_tune_command(args)}",
            file=sys.stderr,
        )
        return 130
    print(f"\n{'layer':<60} {'best config':<36} {'cycles':>9} {'measured':>8} {'reused':>6}")
    for result in results:
        best = str(result.best) if result.best is not None else "none fits"
        cycles = result.best_cycles if result.best_cycles is not None else "-"
        print(
            f"{result.workload!s:<60} {best:<36} {cycles:>9} {result.measured:>8} "
            f"{result.reused:>6}"
        )
    return 0


def cmd_demo(args) -> int:
    from tvm_convadd.demo import run_demo

    return run_demo(n_tiles=args.tiles, pipeline=args.pipeline)


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        help="resnet50, resnet18, mobilenet_v2, efficientnet_b0, regnetx_400mf, or an .onnx file",
    )
    parser.add_argument(
        "--image-size", type=int, help="input height and width of a built-in network (224)"
    )
    parser.add_argument(
        "--width", type=_width, help="channel width multiplier of a built-in network (1.0)"
    )
    parser.add_argument(
        "--input-shape",
        type=_input_shape,
        action="append",
        default=[],
        metavar="NAME:1x3x224x224",
        help="bind an ONNX input's dynamic dims (repeat for each input)",
    )
    parser.add_argument("--target", default="convadd-sim", help="a convadd-sim* target tag")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tvm-convadd", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="compile a network for the accelerator and run it")
    _model_args(run)
    run.add_argument(
        "--tiles",
        type=_tiles,
        default="auto",
        help="auto (records, else heuristic), heuristic, or N",
    )
    run.add_argument("--axis", default="height", choices=["height", "width", "channel"])
    run.add_argument("--pipeline", default="software", choices=["none", "software", "vthread"])
    run.add_argument("--records", action="append", default=[], help="a tuning records directory")
    run.add_argument("--trace", help="write a Chrome trace JSON of the run here")
    run.add_argument("--gantt", help="write a Gantt chart PNG of the run here")
    run.add_argument("--report", help="write the per-layer table here")
    run.add_argument("--check", action="store_true", help="compare with the pure-llvm build")
    run.add_argument(
        "--baseline",
        action="store_true",
        help="also compile each layer unfused (conv kernel, then elementwise kernels) and compare",
    )
    run.add_argument(
        "--timeline",
        action="store_true",
        help="also put every offloaded call on one accelerator timeline (layers overlap)",
    )
    run.add_argument("--timing-only", action="store_true", help="simulate cycles only")
    run.set_defaults(func=cmd_run)

    tune = sub.add_parser("tune", help="tune every offloaded layer of a network")
    _model_args(tune)
    tune.add_argument(
        "--trials", type=_positive("--trials"), default=64, help="measurements per layer"
    )
    tune.add_argument("--records", dest="records_dir", default="convadd-records", help="directory")
    tune.add_argument(
        "--tracker", metavar="HOST:PORT", help="measure on the RPC servers of this TVM tracker"
    )
    tune.add_argument("--key", help="the servers' key at the tracker (convadd-sim)")
    tune.add_argument(
        "--tracker-timeout",
        type=float,
        metavar="SECS",
        help="seconds to reach the tracker and get a server from it (5)",
    )
    tune.set_defaults(func=cmd_tune)

    explain = sub.add_parser("explain", help="say for each conv2d why it was or was not fused")
    _model_args(explain)
    explain.set_defaults(func=cmd_explain)

    demo = sub.add_parser("demo", help="fuse a ResNet bottleneck and show every step")
    demo.add_argument("--tiles", type=int, default=4)
    demo.add_argument("--pipeline", default="software", choices=["none", "software", "vthread"])
    demo.set_defaults(func=cmd_demo)

    targets = sub.add_parser("targets", help="list the convadd-sim target tags")
    targets.set_defaults(func=cmd_targets)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConvAddError as err:
        print(f"tvm-convadd: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tvm-convadd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
