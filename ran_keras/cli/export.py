"""``ran export``, ``ran vela``, ``ran hwtable`` and ``ran bench-cpu``: int8 TFLite, Ethos-U costs, CPU speed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ran_keras.cli.common import (CliError, add_json_arg, emit_json, floats, nonneg_int, positive_floats,
                                  positive_int)


def _csv_list(value: str) -> List[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {value!r}")
    return items


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _add_model_args(p: argparse.ArgumentParser, *, int8_flags: bool = True) -> None:
    from ran_keras.export import settings
    from ran_keras.export.settings import Settings
    p.add_argument("--input-size", type=positive_int, help="square input size (default: the spec's, 224)")
    p.add_argument("--classes", type=positive_int, default=Settings.classes,
                   help=f"classifier size (default {Settings.classes})")
    p.add_argument("--activation", help="replace every non-linearity (e.g. relu6, hard_swish); specs only")
    p.add_argument("--seed", type=nonneg_int, default=Settings.seed,
                   help=f"weights and calibration crops seed (default {Settings.seed})")
    p.add_argument("--calibration", default=settings.CALIBRATION_SOURCE, metavar="SOURCE",
                   help=f"representative data (default {settings.CALIBRATION_SOURCE}): photos (offline scikit-image/"
                        "scikit-learn photos), random, folder:PATH (or a directory), tfds:NAME[:SPLIT] (prepared "
                        "locally; nothing is downloaded)")
    p.add_argument("--samples", type=positive_int, default=settings.CALIBRATION_COUNT,
                   help=f"calibration images (default {settings.CALIBRATION_COUNT})")
    p.add_argument("--tfds-data-dir", help="TFDS data_dir for --calibration tfds:...")
    p.add_argument("--input-mean", type=floats, help="override the input mean (0-255 scale; saved Keras models "
                                                        "carry none, default 127.5)")
    p.add_argument("--input-std", type=positive_floats, help="override the input std (default 127.5 for saved models)")
    _add_memory_flag(p)
    if int8_flags:
        p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default per channel)")


def _add_memory_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-memory-check", action="store_true",
                   help="export even when the estimated memory (weights, calibration images) exceeds the machine's")


def register(sub: argparse._SubParsersAction) -> None:
    from ran_keras.export import settings as hw  # light: no numpy/TensorFlow at start-up
    defaults = hw.Settings  # its fields' defaults are the library's
    p = sub.add_parser("export", help="export a model to int8 (or fp32) TFLite and check it",
                       description="Build a registered model or spec (seeded weights), or load a saved .keras/.h5 "
                                   "model, convert it to full-integer int8 TFLite (int8 input/output), list its "
                                   "ops, fail if a tensor stayed float, and compare it with the Keras model on the "
                                   "calibration images.")
    p.add_argument("model", metavar="MODEL", help="registered name, spec .json, or .keras/.h5 file")
    p.add_argument("-o", "--output", help="output .tflite (default ./<model>_int8.tflite or _fp32.tflite)")
    _add_model_args(p)
    p.add_argument("--fp32", action="store_true", help="float32 TFLite instead of int8 (for CPU comparisons)")
    p.add_argument("--no-compare", action="store_true", help="skip the int8-vs-Keras comparison")
    add_json_arg(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("vela", help="compile an int8 .tflite with Vela for Ethos-U targets and report its cost",
                       description="Compile with Vela 5.2 and report cycles, FPS, NPU utilisation, memory, CPU "
                                   "fallbacks and the most expensive layers. MODEL may also be a registered name, "
                                   "spec or Keras file: it is exported to int8 first (same options as `ran export`).")
    p.add_argument("model", nargs="?", metavar="MODEL", help=".tflite file, or a model to export first")
    p.add_argument("-t", "--target", action="append", type=_csv_list, metavar="TARGET",
                   help="named target (u55-128, u65-256, u65-256-384k, u85-256, u85-512) or ACCEL:SYSTEM:MEMORY; repeat or "
                        "comma-separate (default: all named targets)")
    p.add_argument("--accelerator-config", help="with --system-config/--memory-mode: a user combination")
    p.add_argument("--system-config", help="Vela system config (e.g. Ethos_U55_High_End_Embedded)")
    p.add_argument("--memory-mode", help="Vela memory mode (e.g. Shared_Sram)")
    p.add_argument("--config", help="your own Vela .ini for the system config / memory mode")
    p.add_argument("--arena-cache-size", type=positive_int, help="SRAM cap in bytes (overrides the memory mode's)")
    p.add_argument("--output-dir", default="out/vela", help="where Vela writes (default out/vela/<target>/)")
    p.add_argument("--top", type=nonneg_int, default=10, help="most expensive layers to show (default 10)")
    p.add_argument("--fail-on-cpu-ops", action="store_true", help="exit 1 when an operator falls back to the CPU")
    p.add_argument("--list-targets", action="store_true", help="list the named targets and exit")
    _add_model_args(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_vela)

    p = sub.add_parser("hwtable", help="the paper's hardware table (Tables 1-2) measured with Vela",
                       description="Build each model (seeded weights), export int8 TFLite, compile it with Vela "
                                   "for each target and print params, MACs and FPS beside the paper's, FPS "
                                   "normalised to efficientnet_lite_b0 on the same target, NPU utilisation and "
                                   "CPU-op counts. Writes hwtable.md/.csv/.json/.png into --output-dir.")
    p.add_argument("--models", type=_csv_list, help="comma-separated models (default: the 10 of Tables 1-2)")
    p.add_argument("--targets", type=_csv_list,
                   help=f"comma-separated targets (default {','.join(hw.DEFAULT_TARGETS)})")
    p.add_argument("--activation", default=defaults.activation, metavar="|".join(hw.ACTIVATIONS),
                   help="default (each model's own), relu6 or hard_swish everywhere (aliases such as hswish work)")
    p.add_argument("--output-dir", default="out/hwtable", help="output folder (default out/hwtable)")
    p.add_argument("--input-size", type=positive_int, default=defaults.input_size,
                   help=f"input size (default {defaults.input_size})")
    p.add_argument("--classes", type=positive_int, default=defaults.classes,
                   help=f"classifier size (default {defaults.classes})")
    p.add_argument("--seed", type=nonneg_int, default=defaults.seed, help=f"seed (default {defaults.seed})")
    p.add_argument("--calibration", default=defaults.calibration, metavar="SOURCE",
                   help=f"as for `ran export` (default {defaults.calibration})")
    p.add_argument("--samples", type=positive_int, default=defaults.samples,
                   help=f"calibration images (default {defaults.samples})")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales")
    p.add_argument("--no-compare", action="store_true", help="skip the int8-vs-Keras comparison")
    p.add_argument("--jobs", type=positive_int, default=defaults.jobs,
                   help=f"conversion worker processes / parallel Vela compiles (default {defaults.jobs})")
    p.add_argument("--no-cache", action="store_true", help="convert again even when out/tflite has the model")
    p.add_argument("--fail-on-cpu-ops", action="store_true", help="exit 1 when any operator falls back to the CPU")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    _add_memory_flag(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_hwtable)

    p = sub.add_parser("bench-cpu", help="CPU latency/FPS of a TFLite model (optionally A/B against another)",
                       description="Median latency and FPS of the TFLite interpreter after warm-up. MODEL is a "
                                   ".tflite file or a model to export first (int8 by default). With --vs, the two "
                                   "models run interleaved (ABBA) and the FPS ratio A/B is reported.")
    p.add_argument("model", metavar="MODEL", help=".tflite file, registered name, spec .json or .keras/.h5")
    p.add_argument("--vs", metavar="MODEL2", help="second model for an interleaved A/B comparison")
    p.add_argument("--threads", type=positive_int, default=1, help="interpreter threads (default 1)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--int8", dest="fp32", action="store_false", help="export models as int8 (default)")
    kind.add_argument("--fp32", dest="fp32", action="store_true", help="export models as fp32")
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs (default 50)")
    p.add_argument("--warmup", type=nonneg_int, default=5, help="untimed runs first (default 5)")
    _add_model_args(p, int8_flags=False)
    add_json_arg(p)
    p.set_defaults(func=cmd_bench, fp32=False)


# --- export ---------------------------------------------------------------------------------------

def _export(args, model: str, *, int8: bool = True, compare: bool = True, output=None, say=_progress):
    from ran_keras.export.settings import parse_source
    from ran_keras.export.pipeline import export_model
    parse_source(args.calibration)  # a bad source fails before the model is built
    return export_model(model, output, input_size=args.input_size, classes=args.classes,
                        activation=args.activation, seed=args.seed, calibration=args.calibration,
                        samples=args.samples, int8=int8, per_channel=not getattr(args, "per_tensor", False),
                        compare=compare, mean=args.input_mean, std=args.input_std, data_dir=args.tfds_data_dir,
                        progress=say, memory_check=not args.no_memory_check)


def _print_export(rep: Dict[str, Any]) -> None:
    tfl = rep["tflite"]
    h, w, c = rep["input_shape"]
    calib = rep["calibration"]
    desc = f"{rep['quantization']} ({rep['weights']} weights)"
    if calib:
        desc += f", calibration {calib['source']} x{calib['count']} (seed {calib['seed']})"
    print(f"{rep['model']}: {desc}, input {h}x{w}x{c}")
    if rep.get("output"):
        print(f"wrote {rep['output']} ({tfl['size_bytes'] / 1e6:.2f} MB, sha256 {tfl['sha256'][:16]})")
    print(f"ops ({tfl['op_count']}): " + ", ".join(f"{k} {v}" for k, v in tfl["ops"].items()))
    if rep["quantization"] == "int8":
        print("tensors: integer only (int8 activations and weights, int32 biases)")
    agree = rep.get("agreement")
    if agree:
        print(f"{rep['quantization']} vs Keras on {agree['images']} calibration images ({agree['compared']}): "
              f"top-1 agreement {100 * agree['top1_agreement']:.0f}%, max |error| {agree['max_abs_error']:.4g}, "
              f"mean |error| {agree['mean_abs_error']:.4g} (Keras {agree['compared']} up to "
              f"{agree['reference_abs_max']:.3g})")


def cmd_export(args) -> int:
    from ran_keras.export.pipeline import default_output
    int8 = not args.fp32
    if args.per_tensor and not int8:
        raise CliError("--per-tensor applies to int8 exports, not --fp32")
    output = args.output
    if output is None:
        output = str(default_output(args.model, args.activation, int8))
        from ran_keras import fileio
        fileio.check_output_file(output, "the default output (-o)")
    elif Path(output).suffix.lower() != ".tflite":
        raise CliError(f"--output must end in .tflite, got {output!r}")
    result = _export(args, args.model, int8=int8, compare=not args.no_compare, output=output)
    if args.json:
        emit_json(result.report, args.json)
    else:
        _print_export(result.report)
    return 0


# --- vela -----------------------------------------------------------------------------------------

def _targets(args) -> List[Any]:
    from ran_keras.export import vela
    custom = [args.accelerator_config, args.system_config, args.memory_mode]
    names = [t for group in (args.target or []) for t in group]
    if any(custom):
        if not all(custom):
            raise CliError("a user combination needs all of --accelerator-config, --system-config and --memory-mode")
        names.append(":".join(custom))
    if not names:
        names = list(vela.named_targets())
    return [vela.resolve_target(n, config=args.config, arena_cache_size=args.arena_cache_size) for n in names]


def _list_targets(args) -> int:
    from ran_keras.export import vela
    from ran_keras.report import table
    targets = vela.named_targets()
    if args.json:
        emit_json({"targets": [t.to_dict() for t in targets.values()]}, args.json)
        return 0
    print(table(["target", "accelerator", "system config", "memory mode", "peak MACs/cycle", "paper column"],
                [[t.name, t.accelerator, t.system_config, t.memory_mode, t.peak_macs_per_cycle,
                  t.paper_column or "-"] for t in targets.values()]))
    for t in targets.values():
        print(f"{t.name}: {t.description}")
    print(f"config: {vela.our_config()}")
    print("Any other combination: --target ACCELERATOR:SYSTEM_CONFIG:MEMORY_MODE (sections from our .ini, "
          "else Vela's bundled Arm/vela.ini, or --config FILE.ini)")
    return 0


def _short(name: str, width: int = 70) -> str:
    parts = []
    for seg in name.split(";"):
        pieces = seg.split("/")
        part = pieces[1] if len(pieces) > 2 else seg
        if part not in parts:
            parts.append(part)
    text = " + ".join(parts)
    return text if len(text) <= width else text[:width - 3] + "..."


def _print_vela(rep, top: int) -> None:
    from ran_keras.report import table
    cap = "no SRAM cap" if rep.sram_cap is None else f"SRAM cap {rep.sram_cap:g} KiB"
    print(f"{rep.network} on {rep.target}: {rep.accelerator}, {rep.system_config}, {rep.memory_mode} ({cap}), "
          f"{rep.core_clock / 1e6:g} MHz")
    print(f"  {rep.inferences_per_second:.2f} FPS ({1000 * rep.inference_time:.3f} ms), cycles {rep.cycles_total:,} "
          f"total / {rep.cycles_npu:,} NPU, {rep.nn_macs:,} MACs, NPU utilisation {100 * rep.utilisation:.1f}% of "
          f"{rep.peak_macs_per_cycle} MACs/cycle")
    print(f"  SRAM used {rep.sram_used:.1f} KiB, off-chip {rep.off_chip_used:.1f} KiB "
          f"(DRAM {rep.dram_used:.1f}, flash {rep.off_chip_flash_used:.1f}); {rep.npu_ops} NPU ops, "
          f"{rep.cpu_op_count} CPU ops")
    if rep.cpu_ops:
        print(f"  WARNING: {rep.cpu_op_count} operator(s) run on the CPU and cost 0 cycles in Vela's estimate, "
              "so this FPS is too optimistic:")
        for o in rep.cpu_ops:
            print(f"    CPU: {o['op']} {o['name']} ({o['reason']})")
    if top and rep.layers:
        rows = [[_short(l.name), l.op, "+".join(dict.fromkeys(l.npu_ops)), l.target, f"{l.cycles:,}",
                 f"{100 * l.cycles / rep.cycles_total:.1f}%" if rep.cycles_total else "-", f"{l.macs:,}"]
                for l in rep.top_layers(top)]
        print(f"  top {len(rows)} layers by cycles:")
        print("\n".join("    " + line for line in table(
            ["layer", "op", "lowered to", "on", "cycles", "share", "MACs"], rows).splitlines()))
    print(f"  files in {rep.output_dir}: " + ", ".join(rep.files.values()))


def cmd_vela(args) -> int:
    from ran_keras.export import vela
    if args.list_targets:
        return _list_targets(args)
    if not args.model:
        raise CliError("give a .tflite file (or a model to export) to compile, or --list-targets")
    from ran_keras.export.pipeline import output_name, resolve_model_arg
    targets = _targets(args)
    ref = resolve_model_arg(args.model, args.activation, command="ran vela", tflite=True)
    export_report = None
    if ref.origin == "tflite":
        tflite = str(ref.path)
    else:
        tflite = str(Path(args.output_dir) / output_name(ref.label))
        export_report = _export(args, args.model, int8=True, compare=False, output=tflite).report
        _progress(f"exported {args.model} -> {tflite}")
    reports = []
    for tgt in targets:
        reports.append(vela.run_vela(tflite, tgt, Path(args.output_dir) / tgt.name))
    if args.json:
        data = {"model": tflite, "export": export_report, "reports": [r.to_dict(top=args.top) for r in reports]}
        emit_json(data, args.json)
    else:
        for rep in reports:
            _print_vela(rep, args.top)
    failing = [r for r in reports if r.cpu_ops]
    if failing:
        for r in failing:
            print(f"ran vela: WARNING: {vela.cpu_ops_message(r)}", file=sys.stderr)
        if args.fail_on_cpu_ops:
            return 1
    return 0


# --- hwtable --------------------------------------------------------------------------------------

def cmd_hwtable(args) -> int:
    from ran_keras.export import hwtable
    from ran_keras.export.errors import CpuOpsError, IncompleteTableError
    settings = hwtable.Settings(
        models=tuple(args.models or hwtable.DEFAULT_MODELS), targets=tuple(args.targets or hwtable.DEFAULT_TARGETS),
        activation=args.activation, input_size=args.input_size, classes=args.classes, seed=args.seed,
        calibration=args.calibration, samples=args.samples, per_channel=not args.per_tensor,
        compare=not args.no_compare, jobs=args.jobs, cache=not args.no_cache, fail_on_cpu_ops=args.fail_on_cpu_ops,
        memory_check=not args.no_memory_check)
    try:
        doc, failure = hwtable.run(settings, args.output_dir, progress=_progress), None
    except (CpuOpsError, IncompleteTableError) as err:  # the table is written (failed rows marked): show it, fail
        if err.document is None:
            raise
        doc, failure = err.document, err
    if args.json:
        emit_json(doc, args.json)
    else:
        print(hwtable.render_text(doc, markdown=args.markdown), end="")
    if failure is not None:
        print(f"ran hwtable: error: {failure}", file=sys.stderr)
        return 1
    return 0


# --- bench-cpu ------------------------------------------------------------------------------------

def _bench_models(args, models: List[str]) -> List[Tuple[Any, str]]:
    """(path or exported bytes, label) per MODEL argument; every argument is checked before any export."""
    from ran_keras.export.pipeline import resolve_model_arg
    refs = [resolve_model_arg(m, args.activation, command="ran bench-cpu", tflite=True) for m in models]
    out = []
    for model, ref in zip(models, refs):
        if ref.origin == "tflite":
            out.append((str(ref.path), model))
        else:
            data = _export(args, model, int8=not args.fp32, compare=False).tflite
            out.append((data, f"{model} ({'fp32' if args.fp32 else 'int8'})"))
    return out


def cmd_bench(args) -> int:
    from ran_keras.export import bench
    (a, label_a), *rest = _bench_models(args, [args.model] + ([args.vs] if args.vs else []))
    if rest:
        b, label_b = rest[0]
        res = bench.ab_bench(a, b, threads=args.threads, runs=args.runs, warmup=args.warmup, seed=args.seed)
        res.a.model, res.b.model = label_a, label_b
        if args.json:
            emit_json(res.to_dict(), args.json)
            return 0
        for r in (res.a, res.b):
            print(f"{r.model}: median {r.median_ms:.3f} ms, {r.fps:.2f} FPS (p10 {r.percentile_ms(10):.3f} / p90 "
                  f"{r.percentile_ms(90):.3f} ms; {r.input_dtype} input)")
        print(f"A/B FPS ratio: {res.ratio:.3f} ({args.model} / {args.vs}; {args.runs} interleaved runs each, "
              f"{args.threads} thread(s))")
        return 0
    res = bench.bench_tflite(a, threads=args.threads, runs=args.runs, warmup=args.warmup, seed=args.seed)
    res.model = label_a
    if args.json:
        emit_json(dict(res.to_dict(), machine=bench.machine()), args.json)
        return 0
    print(f"{res.model}: median {res.median_ms:.3f} ms, {res.fps:.2f} FPS over {res.runs} runs after {res.warmup} "
          f"warm-up (p10 {res.percentile_ms(10):.3f} / p90 {res.percentile_ms(90):.3f} ms, {args.threads} thread(s), "
          f"{res.input_dtype} input)")
    return 0
