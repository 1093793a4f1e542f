"""``ran hwtable``: the hardware columns of the paper's Tables 1 and 2, measured with Vela.

For each model: build it from its spec with seeded weights, export int8 TFLite (calibrated on
the offline photos), compile it with Vela for each target, and put our params/MACs/FPS beside
the paper's. FPS is normalised to EfficientNet-Lite-B0 on the same target, as the paper does.

With ``jobs > 1`` and more than one model to convert, conversions run in spawned worker
processes and the caller does not import TensorFlow; otherwise (``jobs == 1``, or a single
conversion) the caller converts in-process and imports it. Vela compiles run as subprocesses in
parallel threads, started as soon as their model is converted. Converted models are cached in
``<output>/tflite`` keyed by spec, input size, classes, seed, calibration source (and, for a
folder, the names and contents of the images used), samples, per-channel and compare flags, and
software versions, so a second run only recompiles.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import datetime as _dt
import hashlib
import io as _io
import json
import multiprocessing
import os
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ran_keras import fileio
from ran_keras.errors import RanError
from ran_keras.export import calibration as cal
from ran_keras.export.errors import ExportError
from ran_keras.export.settings import (  # noqa: F401  (re-exported)
    ACTIVATIONS, DEFAULT_MODELS, DEFAULT_TARGETS, REFERENCE, Settings, check_activation)

FORMAT = "ran-keras-hwtable"
OUTPUT_FILES = ("hwtable.md", "hwtable.csv", "hwtable.json", "hwtable.png")
#: bump when the conversion recipe changes, so cached .tflite files are not reused
RECIPE = 1

PAPER_SOURCE = ("paper: Bhardwaj et al. 2022, Tables 1-2 (Params/MACs as printed; normalised FPS from Arm's "
                "estimators: Vela for Ethos-U55, a proprietary estimator for Ethos-U65; trained weights)")


def software_versions() -> Dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version
    import ran_keras
    out: Dict[str, Optional[str]] = {"ran_keras": ran_keras.__version__}
    for pkg in ("tensorflow", "tf-keras", "ethos-u-vela"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# --- one conversion (runs in a worker process) ----------------------------------------------------

@dataclass
class ConvertJob:
    label: str
    spec: Dict[str, Any]          # the spec, activation already applied
    input_size: int
    classes: int
    seed: int
    calibration: str
    samples: int
    per_channel: bool
    compare: bool
    tflite_path: str
    key: str
    model_file: Optional[str] = None  # a saved Keras model to export instead of building the spec

    def cached(self) -> Optional[Dict[str, Any]]:
        """The stored export report when the .tflite on disk was made from exactly this job."""
        side = Path(self.tflite_path).with_suffix(".json")
        path = Path(self.tflite_path)
        if not (side.is_file() and path.is_file()):
            return None
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except ValueError:
            return None
        if meta.get("key") != self.key or meta.get("tflite", {}).get("sha256") != _sha256(path.read_bytes()):
            return None
        return meta


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_key(spec_dict: Dict[str, Any], settings: Settings, versions: Dict[str, Any]) -> str:
    payload = {"recipe": RECIPE, "spec": spec_dict, "input_size": settings.input_size, "classes": settings.classes,
               "seed": settings.seed, "calibration": settings.calibration, "samples": settings.samples,
               "calibration_images": cal.fingerprint(settings.calibration, settings.samples),
               "per_channel": settings.per_channel, "compare": settings.compare, "versions": versions}
    return _sha256(json.dumps(payload, sort_keys=True).encode())


def convert(job: ConvertJob) -> Dict[str, Any]:
    """Build, calibrate, convert, check and compare one model; writes the .tflite and its report."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.perf_counter()
    from ran_keras.builder import build_model
    from ran_keras.export.flatbuffer import check_integer_only, inspect_tflite
    from ran_keras.export.tflite import compare_with_keras, to_tflite
    from ran_keras.spec import NetworkSpec
    spec = NetworkSpec.from_dict(job.spec)
    size = job.input_size
    if job.model_file is not None:
        model = _load_saved(job)
    else:
        model = build_model(spec, (size, size, spec.input_channels), classes=job.classes, seed=job.seed)
    images, calib = cal.calibration_set(job.calibration, job.samples, size, spec=spec,
                                        channels=spec.input_channels, seed=job.seed)
    data = to_tflite(model, images, int8=True, per_channel=job.per_channel)
    info = inspect_tflite(data)
    check_integer_only(info, f"the int8 export of {job.label}")
    agreement = compare_with_keras(model, data, images) if job.compare else None
    path = Path(job.tflite_path)
    fileio.write_bytes(path, data)
    report = {"key": job.key, "model": job.label, "calibration": calib, "agreement": agreement,
              "tflite": dict(info.to_dict(), file=path.name)}
    fileio.write_json(path.with_suffix(".json"), report)
    report["seconds"] = time.perf_counter() - t0
    return report


def _load_saved(job: ConvertJob):
    """The saved Keras model of a job, checked against the table's input size and classes."""
    from ran_keras.builder import load_model
    from ran_keras.export.tflite import input_shape_of
    model = load_model(job.model_file)
    h, w, _ = input_shape_of(model)
    classes = model.output_shape[-1] if len(model.output_shape) == 2 else None
    if (h, w) != (job.input_size, job.input_size) or classes != job.classes:
        raise ExportError(f"{job.model_file} has a {h}x{w} input and {classes} classes; this table is at "
                          f"--input-size {job.input_size}, --classes {job.classes}")
    return model


def _worker_init(threads: int, log_dir: Optional[str] = None) -> None:
    """Give each worker its share of the cores (no oversubscription) and send TensorFlow's console
    chatter (C++ log lines, the converter's prints) to ``log_dir/worker-<pid>.log``; errors still
    reach the caller as exceptions."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(log_dir) / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    from ran_keras.backend import tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


# --- the table ----------------------------------------------------------------------------------

@dataclass
class Row:
    label: str
    name: str                       # registered/spec name
    activation: str
    params: int
    macs: int
    paper: Optional[Dict[str, Any]]
    export: Dict[str, Any] = field(default_factory=dict)
    targets: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    error: Optional[str] = None     # why the export failed (then no target has figures)


def _plan(settings: Settings) -> Tuple[List[Tuple[str, Any, Any]], str]:
    """[(label, model argument, spec)] for the models (the reference first when not listed) and the
    reference label. A saved Keras model brings its spec from its ``x.spec.json`` sidecar."""
    from ran_keras.export.pipeline import resolve_model_arg
    specs = []
    seen = set()
    for ref in settings.models:
        m = resolve_model_arg(ref, settings.activation, command="ran hwtable")
        if m.label in seen:
            raise ExportError(f"model {ref!r} is listed twice")
        seen.add(m.label)
        specs.append((m.label, ref, _saved_spec(m.path) if m.origin == "keras" else m.spec))
    reference = resolve_model_arg(REFERENCE, settings.activation)
    if reference.label not in seen:
        specs.insert(0, (reference.label, REFERENCE, reference.spec))
    return specs, reference.label


def _check_memory(plan, settings: Settings) -> None:
    """Each model's export, times the conversions that run at once, must fit in memory."""
    from ran_keras.export.pipeline import check_export_memory
    parallel = min(settings.jobs, len(plan))
    for _, _, spec in plan:
        check_export_memory(spec, input_size=settings.input_size, classes=settings.classes,
                            samples=settings.samples, parallel=parallel)


def _saved_spec(path):
    """The spec beside a saved Keras model (for its costs and input normalisation)."""
    from ran_keras.spec import load_sidecar, sidecar_path
    spec = load_sidecar(path)
    if spec is None:
        raise ExportError(f"{path}: ran hwtable needs the model's spec beside it ({sidecar_path(path).name}, written "
                          "by `ran weights import` and by training); export it alone with `ran export` instead")
    return spec


def _paper(ref) -> Optional[Dict[str, Any]]:
    """The paper's figures of a registered model (``PaperFigures.to_dict``), else None."""
    from ran_keras import registry
    if isinstance(ref, str) and registry.is_registered(ref):
        paper = registry.get_entry(ref).paper
        return paper.to_dict() if paper is not None else None
    return None


def run(settings: Settings, output_dir, progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Build, export and compile every model for every target; write the table files; return the JSON.

    The previous run's table files go first. A model whose export fails, or a target whose Vela
    compile fails, is marked with its reason while the rest finish; the table is then written
    and IncompleteTableError (carrying it) is raised."""
    from ran_keras.export import vela
    from ran_keras.analysis.profiler import profile_spec
    say = progress or (lambda msg: None)
    t_start = time.perf_counter()
    out = Path(output_dir)
    if not vela.vela_available():
        from ran_keras.export.errors import VelaNotInstalledError
        raise VelaNotInstalledError()
    targets = [vela.resolve_target(t) for t in settings.targets]
    if not targets:
        raise ExportError("no target given; accepted: " + ", ".join(vela.named_targets()))
    plan, ref_label = _plan(settings)
    if settings.memory_check:
        _check_memory(plan, settings)
    removed = remove_outputs(out)  # a table left from an earlier run must not pass for this one's
    if removed:
        say(f"hwtable: removed the previous table ({', '.join(p.name for p in removed)})")
    versions = software_versions()
    rows: Dict[str, Row] = {}
    jobs: List[ConvertJob] = []
    for label, ref, spec in plan:
        prof = profile_spec(spec, input_size=settings.input_size, classes=settings.classes)
        saved = _saved_file(ref)
        rows[label] = Row(label, spec.name, spec.activation, prof.params, prof.macs, None if saved else _paper(ref))
        spec_dict = spec.to_dict()
        key = cache_key(dict(spec_dict, saved_sha256=_sha256(Path(saved).read_bytes()) if saved else None),
                        settings, versions)
        jobs.append(ConvertJob(label, spec_dict, settings.input_size, settings.classes, settings.seed,
                               settings.calibration, settings.samples, settings.per_channel, settings.compare,
                               str(out / "tflite" / f"{label}.tflite"), key, saved))
    n_models, n_targets = len(jobs), len(targets)
    say(f"hwtable: {n_models} models x {n_targets} targets ({', '.join(t.name for t in targets)}), "
        f"activation {settings.activation}, {settings.input_size}x{settings.input_size}, "
        f"calibration {settings.calibration} x{settings.samples}, {settings.jobs} worker(s) -> {out}")

    done_vela = 0
    pending_vela: Dict[cf.Future, Tuple[str, Any]] = {}
    vela_pool = cf.ThreadPoolExecutor(max_workers=max(1, settings.jobs))

    def submit_vela(job: ConvertJob) -> None:
        for tgt in targets:
            fut = vela_pool.submit(vela.run_vela, job.tflite_path, tgt, out / "vela" / tgt.name)
            pending_vela[fut] = (job.label, tgt)

    def finish_vela(fut: cf.Future) -> None:
        nonlocal done_vela
        label, tgt = pending_vela.pop(fut)
        done_vela += 1
        try:
            rep = fut.result()
        except Exception as err:  # noqa: BLE001 - one failed compile must not lose the others
            rows[label].targets[tgt.name] = {"error": failure_text("Vela", err)}
            say(f"  [{done_vela:>3}/{n_models * n_targets}] vela {label} on {tgt.name}: FAILED: "
                f"{rows[label].targets[tgt.name]['error']}")
            return
        rows[label].targets[tgt.name] = _target_entry(rep)
        cpu = f", {rep.cpu_op_count} CPU ops!" if rep.cpu_ops else ""
        say(f"  [{done_vela:>3}/{n_models * n_targets}] vela {label} on {tgt.name}: "
            f"{rep.inferences_per_second:.1f} FPS, utilisation {100 * rep.utilisation:.0f}%{cpu}")

    def converted(job: ConvertJob, report: Dict[str, Any]) -> None:
        rows[job.label].export = _export_entry(report)
        agree = report.get("agreement") or {}
        extra = (f", int8 vs Keras: top-1 {agree['top1_agreement']:.0%}, max logit error "
                 f"{agree['max_abs_error']:.3g}" if agree else "")
        say(f"  converted {job.label} in {report['seconds']:.1f} s "
            f"({report['tflite']['size_bytes'] / 1e6:.1f} MB{extra})")
        submit_vela(job)

    def failed(job: ConvertJob, err: BaseException) -> None:
        nonlocal done_vela
        rows[job.label].error = failure_text("export", err)
        done_vela += n_targets
        say(f"  FAILED    {job.label}: {rows[job.label].error}")

    pool = None
    try:
        todo = []
        for job in jobs:
            meta = job.cached() if settings.cache else None
            if meta is None:
                todo.append(job)
                continue
            rows[job.label].export = _export_entry(meta)
            say(f"  cached    {job.label} (tflite/{Path(job.tflite_path).name})")
            submit_vela(job)
        # largest first: the slowest conversions start early, so the workers finish together
        todo.sort(key=lambda j: -rows[j.label].macs)
        pending_conv: Dict[cf.Future, ConvertJob] = {}
        if settings.jobs > 1 and len(todo) > 1:
            workers = min(settings.jobs, len(todo))
            pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_worker_init,
                                          initargs=(max(1, (os.cpu_count() or 1) // workers), str(out / "logs")))
            pending_conv = {pool.submit(convert, job): job for job in todo}
        else:
            for job in todo:
                try:
                    report = convert(job)
                except Exception as err:  # noqa: BLE001 - finish the other models, report this one
                    failed(job, err)
                    continue
                converted(job, report)
        while pending_conv or pending_vela:
            done, _ = cf.wait(list(pending_conv) + list(pending_vela), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                if fut in pending_conv:
                    job = pending_conv.pop(fut)
                    try:
                        report = fut.result()
                    except BrokenProcessPool as err:
                        failed(job, ExportError(f"a conversion worker died ({err}); its console output is in "
                                                f"{out / 'logs'}. Out of memory? Try --jobs 1"))
                        continue
                    except Exception as err:  # noqa: BLE001 - finish the other models, report this one
                        failed(job, err)
                        continue
                    converted(job, report)
                else:
                    finish_vela(fut)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        vela_pool.shutdown(wait=True, cancel_futures=True)

    doc = _document(settings, rows, targets, ref_label, versions)
    paths = write_outputs(doc, out)
    cpu_total = sum(t.get("cpu_op_count", 0) for m in doc["models"] for t in m["targets"].values())
    if cpu_total:
        say(f"WARNING: {cpu_total} operator(s) fall back to the CPU (0 cycles in Vela): FPS of those rows is "
            "too optimistic; see the cpu_ops lists in the JSON")
    say(f"hwtable: done in {time.perf_counter() - t_start:.1f} s; wrote {', '.join(str(p) for p in paths)}")
    if doc["failures"]:
        from ran_keras.export.errors import IncompleteTableError
        lost = sum(n_targets if f["target"] is None else 1 for f in doc["failures"])
        raise IncompleteTableError(f"{lost} of {n_models * n_targets} measurements failed (their "
                                   "rows are marked in the table): " + "; ".join(
                                       f"{f['model']}{' on ' + f['target'] if f['target'] else ''}: {f['error']}"
                                       for f in doc["failures"]), document=doc)
    if settings.fail_on_cpu_ops and cpu_total:
        from ran_keras.export.errors import CpuOpsError
        raise CpuOpsError(f"{cpu_total} operator(s) fall back to the CPU: " + "; ".join(
            f"{m['label']} on {t} ({e['cpu_op_count']}): {', '.join(o['op'] for o in e['cpu_ops'])}"
            for m in doc["models"] for t, e in m["targets"].items() if e.get("cpu_ops")), document=doc)
    return doc


def failure_text(stage: str, err: BaseException) -> str:
    """One line saying what failed and why (the first line of the error)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    kind = type(err).__name__
    return f"{stage} failed: {text}" if text and isinstance(err, RanError) else f"{stage} failed: {kind}: {text}"


def remove_outputs(output_dir) -> List[Path]:
    """Delete the table files an earlier run left in ``output_dir`` (cached conversions stay)."""
    removed = []
    for name in OUTPUT_FILES:
        path = Path(output_dir) / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def _saved_file(ref) -> Optional[str]:
    from ran_keras.export.pipeline import file_kind
    return str(ref) if file_kind(ref) == "keras" else None


def _export_entry(meta: Dict[str, Any]) -> Dict[str, Any]:
    tfl = meta["tflite"]
    return {"file": f"tflite/{tfl['file']}", "size_bytes": tfl["size_bytes"], "sha256": tfl["sha256"],
            "ops": tfl["ops"], "integer_only": not tfl["float_tensors"], "calibration": meta["calibration"],
            "agreement": meta["agreement"]}


def _target_entry(rep) -> Dict[str, Any]:
    return {"cycles_total": rep.cycles_total, "cycles_npu": rep.cycles_npu, "inference_time": rep.inference_time,
            "inferences_per_second": rep.inferences_per_second, "fps_normalised": None,
            "paper_fps_normalised": None, "utilisation": rep.utilisation, "nn_macs": rep.nn_macs,
            "cpu_ops": rep.cpu_ops, "cpu_op_count": rep.cpu_op_count, "npu_ops": rep.npu_ops,
            "sram_used": rep.sram_used, "off_chip_used": rep.off_chip_used, "sram_cap": rep.sram_cap,
            "top_layers": [{"name": l.name, "op": l.op, "cycles": l.cycles} for l in rep.top_layers(3)]}


def _document(settings: Settings, rows: Dict[str, Row], targets, ref_label: str, versions) -> Dict[str, Any]:
    ref_row = rows[ref_label]
    # the paper's MACs and FPS are for 224x224 and 1000 classes; at other settings they are not shown
    comparable = settings.input_size == 224 and settings.classes == 1000
    models, failures = [], []
    for row in rows.values():
        if row.error:
            row.targets = {t.name: {"error": row.error} for t in targets}
            failures.append({"model": row.label, "target": None, "error": row.error})
        for tgt in targets:
            entry = row.targets.setdefault(tgt.name, {"error": "not measured"})
            if "error" in entry:
                if not row.error:
                    failures.append({"model": row.label, "target": tgt.name, "error": entry["error"]})
                continue
            ref_fps = ref_row.targets.get(tgt.name, {}).get("inferences_per_second")
            entry["fps_normalised"] = entry["inferences_per_second"] / ref_fps if ref_fps else None
            if row.paper and tgt.paper_column and comparable:
                entry["paper_fps_normalised"] = row.paper.get(tgt.paper_column)
        models.append({"label": row.label, "name": row.name, "activation": row.activation,
                       "reference": row.label == ref_label, "params": row.params, "macs": row.macs,
                       "paper": row.paper, "export": row.export, "error": row.error,
                       "targets": {t.name: row.targets[t.name] for t in targets}})
    return {
        "format": FORMAT, "version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "settings": settings.public(), "software": versions, "reference": ref_label,
        "paper_comparable": comparable, "complete": not failures, "failures": failures,
        "targets": {t.name: t.to_dict() for t in targets},
        "units": {"params": "count", "macs": "multiply-accumulates per image (conv, depthwise, dense)",
                  "inference_time": "s", "sram_used": "KiB", "off_chip_used": "KiB", "sram_cap": "KiB, null = none",
                  "utilisation": "Vela nn_macs / (cycles_total x peak MACs per cycle)",
                  "fps_normalised": f"inferences_per_second / that of {ref_label} on the same target"},
        "notes": [PAPER_SOURCE,
                  "ours: Vela 5.2 estimates for seeded random weights (random weights do not compress, so weight "
                  "traffic is the worst case); never the paper's numbers"],
        "models": models,
    }


# --- output files -------------------------------------------------------------------------------

def _x(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}x"


def table_rows(doc: Dict[str, Any]) -> Tuple[List[str], List[List[Any]]]:
    from ran_keras.report import fmt_count, fmt_pct
    targets = list(doc["targets"])
    headers = ["model", "act", "params", "paper", "MACs", "paper"]
    for t in targets:
        headers += [f"{t} FPS", "norm", "paper", "util"]
    headers.append("CPU ops")
    rows = []
    for m in doc["models"]:
        p = m["paper"] or {}
        row = [m["label"] + (" (ref)" if m["reference"] else ""), m["activation"], fmt_count(m["params"]),
               p.get("params", "-"), fmt_count(m["macs"]), p.get("macs", "-") if doc["paper_comparable"] else "-"]
        for t in targets:
            e = m["targets"][t]
            if "error" in e:
                row += ["FAILED", "-", "-", "-"]
                continue
            row += [f"{e['inferences_per_second']:.1f}", _x(e["fps_normalised"]), _x(e["paper_fps_normalised"]),
                    fmt_pct(100 * e["utilisation"], digits=0, signed=False)]
        row.append("/".join(str(m["targets"][t].get("cpu_op_count", "-")) for t in targets))
        rows.append(row)
    return headers, rows


def render_text(doc: Dict[str, Any], markdown: bool = False) -> str:
    from ran_keras.report import table
    headers, rows = table_rows(doc)
    s = doc["settings"]
    lines = [f"{len(doc['models'])} models, {s['input_size']}x{s['input_size']}, {s['classes']} classes, activation "
             f"{s['activation']}, int8 ({'per-channel' if s['per_channel'] else 'per-tensor'}), calibration "
             f"{s['calibration']} x{s['samples']}, seed {s['seed']}", ""]
    lines.append(table(headers, rows, markdown=markdown))
    lines.append("")
    for f in doc.get("failures", []):
        lines.append(f"FAILED: {f['model']}{' on ' + f['target'] if f['target'] else ''}: {f['error']}")
    if doc.get("failures"):
        lines.append("")
    for name, t in doc["targets"].items():
        caps = {m["targets"][name]["sram_cap"] for m in doc["models"] if "error" not in m["targets"][name]}
        cap = ("no SRAM cap" if caps == {None} else
               "SRAM cap " + "/".join(f"{c:g} KiB" for c in sorted(c for c in caps if c is not None)))
        lines.append(f"{name}: {t['accelerator']}, {t['system_config']}, {t['memory_mode']} ({cap}); "
                     f"peak {t['peak_macs_per_cycle']} MACs/cycle" + (f"; paper column {t['paper_column']}"
                                                                    if t.get("paper_column") else ""))
    lines += ["",
              f"FPS: Vela inferences_per_second. norm: FPS / FPS of {doc['reference']} on the same target. "
              "paper: the paper's normalised FPS (U55 column for u55 targets, U65 column for u65 targets). "
              "util: MACs / (cycles x peak MACs per cycle). CPU ops: operators Vela leaves to the CPU, per "
              "target (they cost 0 cycles in its estimate).", PAPER_SOURCE,
              *([] if doc["paper_comparable"] else [
                  "The paper's MACs and FPS are for 224x224 and 1000 classes, so they are not shown here."]),
              "Ours are Vela 5.2 estimates for seeded random weights, not the paper's numbers."]
    return "\n".join(lines) + "\n"


def render_csv(doc: Dict[str, Any]) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "activation", "reference", "params", "macs", "paper_params", "paper_macs", "target",
                "accelerator", "system_config", "memory_mode", "cycles_total", "cycles_npu", "inference_time_s",
                "inferences_per_second", "fps_normalised", "paper_fps_normalised", "utilisation", "cpu_op_count",
                "cpu_ops", "sram_used_kib", "off_chip_used_kib", "error"])
    for m in doc["models"]:
        p = m["paper"] or {}
        for t, e in m["targets"].items():
            tg = doc["targets"][t]
            head = [m["label"], m["activation"], int(m["reference"]), m["params"], m["macs"], p.get("params", ""),
                    p.get("macs", ""), t, tg["accelerator"], tg["system_config"], tg["memory_mode"]]
            if "error" in e:
                w.writerow(head + [""] * 11 + [e["error"]])
                continue
            w.writerow(head + [e["cycles_total"], e["cycles_npu"], f"{e['inference_time']:.9g}",
                               f"{e['inferences_per_second']:.6g}",
                               "" if e["fps_normalised"] is None else f"{e['fps_normalised']:.6g}",
                               "" if e["paper_fps_normalised"] is None else e["paper_fps_normalised"],
                               f"{e['utilisation']:.6g}", e["cpu_op_count"],
                               ";".join(f"{o['op']}:{o['name']}" for o in e["cpu_ops"]),
                               f"{e['sram_used']:.6g}", f"{e['off_chip_used']:.6g}", ""])
    return buf.getvalue()


def plot(doc: Dict[str, Any], path) -> Path:
    """Normalised FPS vs MACs, one panel per target; ours as dots, the paper's as crosses."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    targets = list(doc["targets"])
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 4.6), squeeze=False)
    for ax, t in zip(axes[0], targets):
        ref_fps = next(m["targets"][t].get("inferences_per_second") for m in doc["models"] if m["reference"])
        for m in doc["models"]:
            e = m["targets"][t]
            if e.get("fps_normalised") is None:  # failed, or the reference failed
                continue
            x, y = m["macs"] / 1e6, e["fps_normalised"]
            ax.scatter([x], [y], color="tab:blue", zorder=3, s=28)
            ax.annotate(m["label"].replace("efficientnet_lite_b0", "effnet_lite_b0"), (x, y), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
            paper_y = e["paper_fps_normalised"]
            if paper_y is not None and m["paper"]:
                px = m["paper"]["macs_value"] / 1e6
                ax.scatter([px], [paper_y], marker="x", color="tab:red", zorder=3, s=30)
                ax.plot([x, px], [y, paper_y], color="0.75", lw=0.8, zorder=1)
        ref_text = f"{ref_fps:.1f} FPS" if ref_fps else "failed"
        ax.set_title(f"{t} ({doc['targets'][t]['accelerator']})\nreference {doc['reference']}: {ref_text}",
                     fontsize=9)
        ax.set_xlabel(f"MACs (millions, {doc['settings']['input_size']}x{doc['settings']['input_size']})")
        ax.set_ylabel("FPS / reference FPS")
        ax.grid(True, alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color="tab:blue", label="ours (Vela 5.2, random weights)"),
               plt.Line2D([], [], marker="x", ls="", color="tab:red", label="paper (Tables 1-2)")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def write_outputs(doc: Dict[str, Any], output_dir) -> List[Path]:
    out = Path(output_dir)
    paths = [fileio.write_text(out / "hwtable.md", "# Hardware table\n\n" + render_text(doc, markdown=True)),
             fileio.write_text(out / "hwtable.csv", render_csv(doc)),
             fileio.write_json(out / "hwtable.json", doc),
             plot(doc, out / "hwtable.png")]
    return paths


def strip_volatile(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The document without its timestamp (for comparing two runs)."""
    return {k: v for k, v in doc.items() if k != "created"}
