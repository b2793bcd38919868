"""The `tvm-convadd` command line: demo, run, tune, explain, targets."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from tvm_convadd.errors import ConvAddError


def _tiles(value: str) -> str | int:
    if value in ("auto", "heuristic"):
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(
            f"--tiles {value!r}: use 'auto', 'heuristic' or an integer >= 1"
        )
    return int(value)


def _load_model(args) -> tuple:
    """A built-in network by name, or an ONNX file by path: (mod, params, input shape)."""
    from tvm_convadd import networks

    if args.model.endswith(".onnx"):
        from tvm_convadd.frontends import from_onnx

        mod, params = from_onnx(args.model)
    else:
        mod, params = networks.get_network(args.model, image_size=args.image_size, width=args.width)
    shape = [int(d) for d in mod["main"].params[0].ty.shape.values]
    return mod, params, shape


def cmd_run(args) -> int:
    from tqdm import tqdm

    import tvm_convadd
    from tvm_convadd.report import network_report
    from tvm_convadd.target import trace

    steps = tqdm(total=3, desc="tvm-convadd", unit="step", file=sys.stderr)
    steps.set_postfix_str(f"loading {args.model}")
    mod, params, shape = _load_model(args)
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
    steps.set_postfix_str(f"running ({net.num_offloaded} fused kernels on the simulator)")
    image = np.random.default_rng(0).standard_normal(shape).astype("float32")
    started = time.perf_counter()
    out = net.run(image)
    ran = time.perf_counter() - started
    steps.update()
    steps.close()
    report = network_report(net.session)
    print(report.table())
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

    mod, params, _ = _load_model(args)
    print(format_explanation(explain(prepare(mod, params))))
    return 0


def cmd_targets(_args) -> int:
    from tvm_convadd.target.registry import describe_targets

    print(describe_targets())
    return 0


def cmd_tune(args) -> int:
    from tvm_convadd.partition import PartitionConvAdd, fused_functions, prepare
    from tvm_convadd.tuner import tune_workloads

    mod, params, _ = _load_model(args)
    fused = fused_functions(PartitionConvAdd()(prepare(mod, params)))
    workloads = list(dict.fromkeys(f.workload for f in fused.values()))
    if not workloads:
        print(f"nothing to tune: {args.model} has no conv2d + add the accelerator can take")
        return 0
    print(
        f"tuning {len(workloads)} distinct fused conv+add layers of {args.model} "
        f"for {args.target}, {args.trials} trials each, records in {args.records_dir}"
    )
    results = tune_workloads(
        workloads, target=args.target, trials=args.trials, records_dir=args.records_dir
    )
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
    parser.add_argument("model", help="resnet50, resnet18, mobilenet_v2, or an .onnx file path")
    parser.add_argument("--image-size", type=int, default=224, help="input height and width")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
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
    run.add_argument("--timing-only", action="store_true", help="simulate cycles only")
    run.set_defaults(func=cmd_run)

    tune = sub.add_parser("tune", help="tune every offloaded layer of a network")
    _model_args(tune)
    tune.add_argument("--trials", type=int, default=64, help="measurements per layer")
    tune.add_argument("--records", dest="records_dir", default="convadd-records", help="directory")
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
