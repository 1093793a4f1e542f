"""Compile an int8 .tflite with Vela 5.2 for a named Ethos-U target and read back what it costs.

Targets are complete settings (accelerator, system config, memory mode, config file) kept in
``vela_configs/targets.json`` and ``vela_configs/ran_keras.ini``; any other combination can be
given as ``ACCELERATOR:SYSTEM_CONFIG:MEMORY_MODE``. Vela runs as a subprocess (its CLI), so a
crash inside it cannot take the caller down, its stderr can be shown, and compiles run in
parallel. Its summary CSV and per-layer CSV (``--verbose-performance``) are parsed into a
``VelaReport``. Operators Vela leaves to the CPU cost 0 cycles in its estimate, so they are
listed in every report and ``fail_on_cpu_ops`` turns them into an error.
"""

from __future__ import annotations

import configparser
import csv
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ran_keras.export.errors import (CpuOpsError, FloatTensorError, UnknownTargetError, VelaConfigError,
                                     VelaError, VelaNotInstalledError)

TARGETS_FILE = "targets.json"

#: peak MACs per cycle of each accelerator configuration (Vela 5.2 architecture_features:
#: ArchitectureConfig.macs x cores for U55/U65, the configuration's suffix for U85)
PEAK_MACS_PER_CYCLE = {
    "ethos-u55-32": 32, "ethos-u55-64": 64, "ethos-u55-128": 128, "ethos-u55-256": 256,
    "ethos-u65-256": 256, "ethos-u65-512": 512,
    "ethos-u85-128": 128, "ethos-u85-256": 256, "ethos-u85-512": 512, "ethos-u85-1024": 1024,
    "ethos-u85-2048": 2048,
}
ACCELERATORS = tuple(PEAK_MACS_PER_CYCLE)

#: Vela reports arena_cache_size in KiB; the whole 32-bit address range means "no cap"
UNCAPPED_KIB = 4 * 1024 * 1024


def _config_dir() -> Path:
    """The installed ``ran_keras.vela_configs`` data folder (importlib.resources; a real folder,
    since Vela reads the .ini by path)."""
    from importlib.resources import files
    return Path(str(files("ran_keras.vela_configs")))


def vela_available() -> bool:
    try:
        return importlib.util.find_spec("ethosu.vela") is not None
    except (ImportError, ValueError):
        return False


def vela_version() -> Optional[str]:
    try:
        from importlib.metadata import version
        return version("ethos-u-vela")
    except Exception:  # noqa: BLE001 - metadata missing means not installed
        return None


def bundled_config() -> Optional[Path]:
    """Vela's own Arm/vela.ini (for user combinations our .ini does not have)."""
    spec = importlib.util.find_spec("ethosu") if vela_available() else None
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base) / "config_files" / "Arm" / "vela.ini"
        if path.is_file():
            return path
    return None


# --- targets ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """One complete Vela setting."""
    name: str
    accelerator: str
    system_config: str
    memory_mode: str
    config: str                         # .ini file path
    description: str = ""
    paper_column: Optional[str] = None  # PaperFigures attribute with the paper's normalised FPS
    arena_cache_size: Optional[int] = None  # bytes; overrides the memory mode's cap

    @property
    def peak_macs_per_cycle(self) -> int:
        return PEAK_MACS_PER_CYCLE[self.accelerator]

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["config"] = Path(self.config).name
        out["peak_macs_per_cycle"] = self.peak_macs_per_cycle
        return out


@functools.lru_cache(maxsize=None)
def _targets_file() -> Dict[str, Any]:
    return json.loads((_config_dir() / TARGETS_FILE).read_text(encoding="utf-8"))


def our_config() -> Path:
    """vela_configs/ran_keras.ini: the system configs and memory modes of the named targets."""
    return _config_dir() / _targets_file()["config"]


def named_targets() -> Dict[str, Target]:
    """The named targets of vela_configs/targets.json, in file order."""
    ini = str(our_config())
    return {name: Target(name=name, config=ini, **fields) for name, fields in _targets_file()["targets"].items()}


def resolve_target(target: Union[str, Target, Mapping[str, Any]], *, config: Optional[str] = None,
                   arena_cache_size: Optional[int] = None) -> Target:
    """A Target from a name ('u55-128'), 'ACCEL:SYSTEM:MEMORY', a dict, or a Target.

    Custom combinations use our ran_keras.ini when it has both sections, else Vela's bundled
    Arm/vela.ini, or ``config`` (a user .ini) when given.
    """
    if isinstance(target, Target):
        tgt = target
    elif isinstance(target, Mapping):
        missing = {"accelerator", "system_config", "memory_mode"} - set(target)
        if missing:
            raise UnknownTargetError(f"a custom target needs accelerator, system_config and memory_mode; "
                                     f"missing {', '.join(sorted(missing))}")
        tgt = _custom(str(target["accelerator"]), str(target["system_config"]), str(target["memory_mode"]),
                      config or target.get("config"), name=target.get("name"))
    elif isinstance(target, str) and target in named_targets():
        tgt = named_targets()[target]
        if config:
            tgt = Target(**dict(asdict(tgt), config=str(config)))
    elif isinstance(target, str) and target.count(":") == 2:
        tgt = _custom(*target.split(":"), config=config)
    else:
        from ran_keras.errors import close_matches
        names = list(named_targets())
        raise UnknownTargetError(
            f"unknown target {target!r}{close_matches(str(target), names)}; accepted: {', '.join(names)}, "
            "or ACCELERATOR:SYSTEM_CONFIG:MEMORY_MODE (e.g. ethos-u55-256:Ethos_U55_High_End_Embedded:"
            "Shared_Sram); `ran vela --list-targets` describes them")
    if arena_cache_size is not None:
        tgt = Target(**dict(asdict(tgt), arena_cache_size=int(arena_cache_size)))
    check_target(tgt)
    return tgt


def _custom(accelerator: str, system_config: str, memory_mode: str, config: Optional[str] = None,
            name: Optional[str] = None) -> Target:
    accelerator = accelerator.lower()
    if accelerator not in PEAK_MACS_PER_CYCLE:
        from ran_keras.errors import close_matches
        raise UnknownTargetError(f"unknown accelerator {accelerator!r}{close_matches(accelerator, ACCELERATORS)}; "
                                 f"accepted: {', '.join(ACCELERATORS)}")
    if config is None:
        ours = str(our_config())
        config = ours
        parser = _read_ini(ours)
        if not (parser.has_section(f"System_Config.{system_config}")
                and parser.has_section(f"Memory_Mode.{memory_mode}")):
            bundled = bundled_config()
            config = str(bundled) if bundled else ours
    label = name or f"{accelerator}:{system_config}:{memory_mode}"
    return Target(label, accelerator, system_config, memory_mode, str(config), "user-given combination")


@functools.lru_cache(maxsize=None)
def _read_ini_cached(path: str, mtime: float) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(path, encoding="utf-8")
    return parser


def _read_ini(path: str) -> configparser.ConfigParser:
    if not os.path.isfile(path):
        raise VelaConfigError(f"Vela config file {path!r} does not exist")
    if not path.endswith(".ini"):
        raise VelaConfigError(f"Vela config files must end in .ini, got {path!r}")
    return _read_ini_cached(path, os.path.getmtime(path))


def _section(parser: configparser.ConfigParser, name: str) -> Dict[str, str]:
    """A section's options with Vela's ``inherit=`` chain resolved."""
    values: Dict[str, str] = {}
    seen = set()
    while name and name not in seen:
        seen.add(name)
        own = dict(parser.items(name)) if parser.has_section(name) else {}
        for k, v in own.items():
            values.setdefault(k, v)
        name = own.get("inherit", "")
    values.pop("inherit", None)
    return values


def _names(parser: configparser.ConfigParser, prefix: str) -> List[str]:
    return [s[len(prefix):] for s in parser.sections() if s.startswith(prefix)]


def check_target(tgt: Target) -> None:
    """Fail before Vela does, with a message that says what fits: sections exist, memory areas fit."""
    parser = _read_ini(tgt.config)
    systems, modes = _names(parser, "System_Config."), _names(parser, "Memory_Mode.")
    if tgt.system_config not in systems:
        raise VelaConfigError(f"system config {tgt.system_config!r} is not in {Path(tgt.config).name}; "
                              f"accepted: {', '.join(systems)}")
    if tgt.memory_mode not in modes:
        raise VelaConfigError(f"memory mode {tgt.memory_mode!r} is not in {Path(tgt.config).name}; "
                              f"accepted: {', '.join(modes)}")
    system = _section(parser, f"System_Config.{tgt.system_config}")
    fitting = [m for m in modes if _memory_problem(system, _section(parser, f"Memory_Mode.{m}")) is None]
    problem = _memory_problem(system, _section(parser, f"Memory_Mode.{tgt.memory_mode}"))
    if problem:
        raise VelaConfigError(f"memory mode {tgt.memory_mode} does not fit system {tgt.system_config}: {problem}; "
                              f"memory modes that fit it: {', '.join(fitting) or 'none'}")
    mode = _section(parser, f"Memory_Mode.{tgt.memory_mode}")
    if tgt.arena_cache_size is not None and not _has_sram_cache(system, mode):
        raise VelaConfigError(f"--arena-cache-size caps the NPU's SRAM cache, which only memory modes with a separate "
                              f"cache have (Dedicated_Sram, as on u65-256 and u85-256); {tgt.name} uses "
                              f"{tgt.memory_mode}, where Vela ignores the cap")


def _has_sram_cache(system: Mapping[str, str], mode: Mapping[str, str]) -> bool:
    """Vela's ``is_spilling_enabled``: the cache is on an SRAM port apart from the arena's; only then
    does it apply arena_cache_size."""
    cache, arena = mode.get("cache_mem_area", "Axi0"), mode.get("arena_mem_area", "Axi0")
    return system.get(f"{cache.lower()}_port", "Sram") == "Sram" and cache != arena


def _memory_problem(system: Mapping[str, str], mode: Mapping[str, str]) -> Optional[str]:
    """Vela's rules (architecture_features): arena in Sram/Dram, cache in Sram, constants not in Sram
    unless everything is on one port (Vela then treats that port as on-chip flash)."""
    def area(port_key: str) -> str:
        port = mode.get(port_key, "Axi0").lower()
        return system.get(f"{port}_port", "Sram")
    const, arena, cache = area("const_mem_area"), area("arena_mem_area"), area("cache_mem_area")
    ports = {mode.get(k, "Axi0").lower() for k in ("const_mem_area", "arena_mem_area", "cache_mem_area")}
    if arena not in ("Sram", "Dram"):
        return f"it puts the tensor arena on {mode.get('arena_mem_area')} = {arena} (must be Sram or Dram)"
    if cache != "Sram":
        return f"it puts the cache on {mode.get('cache_mem_area')} = {cache} (must be Sram)"
    if const == "Sram" and len(ports) != 1:
        return f"it puts the weights on {mode.get('const_mem_area')} = Sram next to a separate arena"
    return None


# --- the report ---------------------------------------------------------------------------------

@dataclass
class LayerCost:
    name: str
    op: str                 # original TFLite operator
    npu_ops: List[str]      # what Vela lowered it to
    target: str             # NPU or CPU
    cycles: int
    macs: int

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class VelaReport:
    """What Vela says a compiled model costs on one target (memory in KiB, time in seconds)."""
    network: str
    target: str
    accelerator: str
    system_config: str
    memory_mode: str
    config: str
    core_clock: float
    peak_macs_per_cycle: int
    cycles_total: int
    cycles_npu: int
    inference_time: float
    inferences_per_second: float
    nn_macs: int
    sram_used: float
    off_chip_used: float
    dram_used: float
    off_chip_flash_used: float
    sram_cap: Optional[float]
    utilisation: float
    cpu_ops: List[Dict[str, str]] = field(default_factory=list)
    npu_ops: int = 0
    layers: List[LayerCost] = field(default_factory=list)
    output_dir: str = ""
    files: Dict[str, str] = field(default_factory=dict)
    vela_version: Optional[str] = None

    @property
    def cpu_op_count(self) -> int:
        return len(self.cpu_ops)

    def top_layers(self, n: int = 10) -> List[LayerCost]:
        return sorted(self.layers, key=lambda l: (-l.cycles, l.name))[:n]

    def to_dict(self, top: int = 10, layers: bool = False) -> Dict[str, Any]:
        out = {k: getattr(self, k) for k in (
            "network", "target", "accelerator", "system_config", "memory_mode", "config", "core_clock",
            "peak_macs_per_cycle", "cycles_total", "cycles_npu", "inference_time", "inferences_per_second",
            "nn_macs", "utilisation", "sram_used", "off_chip_used", "dram_used", "off_chip_flash_used",
            "sram_cap", "cpu_ops", "npu_ops", "output_dir", "files", "vela_version")}
        out["cpu_op_count"] = self.cpu_op_count
        out["units"] = {"memory": "KiB", "inference_time": "s", "sram_cap": "KiB, null = uncapped"}
        out["top_layers"] = [l.to_dict() for l in self.top_layers(top)]
        if layers:
            out["layers"] = [l.to_dict() for l in self.layers]
        return out


def utilisation(macs: float, cycles: float, peak_macs_per_cycle: int) -> float:
    """Fraction of the MAC array's peak used over the whole inference: MACs / (cycles x peak)."""
    return float(macs) / (float(cycles) * peak_macs_per_cycle) if cycles > 0 else 0.0


def parse_summary_csv(path: Union[str, Path]) -> Dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise VelaError(f"Vela's summary CSV {path} is empty")
    return rows[0]


def parse_per_layer_csv(path: Union[str, Path]) -> List[LayerCost]:
    """Per-layer rows grouped by original operator (Vela splits some ops into several NPU ops)."""
    grouped: Dict[str, LayerCost] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            name = row["Name"]
            cost = grouped.get(name)
            if cost is None:
                cost = grouped[name] = LayerCost(name, row["Original Operator"], [], row["Target"], 0, 0)
            cost.npu_ops.append(row["NNG Operator"])
            cost.cycles += int(float(row["Op Cycles"] or 0))
            cost.macs += int(float(row["MAC Count"] or 0))
            if row["Target"] == "CPU":
                cost.target = "CPU"
    return list(grouped.values())


_WARN_RE = re.compile(r"Warning \(supported operators\) operator: (\S+?), ofm: '(.*?)'\s*\n\s*Reason: (.*)")
_CPU_RE = re.compile(r"^\s*CPU: (\S+) = (.*?) \(outputs", re.M)
_CPU_COUNT_RE = re.compile(r"CPU operators = (\d+)")
_NPU_COUNT_RE = re.compile(r"NPU operators = (\d+)")


def parse_cpu_ops(stdout: str, layers: List[LayerCost]) -> List[Dict[str, str]]:
    """Operators on the CPU with Vela's reason, from its console output and the per-layer CSV."""
    reasons = {m.group(2): (m.group(1), m.group(3).strip()) for m in _WARN_RE.finditer(stdout)}
    names = [l.name for l in layers if l.target == "CPU"]
    originals = {l.name: l.op for l in layers}
    for m in _CPU_RE.finditer(stdout):
        if m.group(2) not in names:
            names.append(m.group(2))
    out = []
    for name in names:
        op, reason = reasons.get(name, (originals.get(name, "?"), "not supported on the NPU"))
        out.append({"op": op, "name": name, "reason": reason})
    return out


def _vela_command(tflite: Path, tgt: Target, out_dir: Path, verbose_performance: bool,
                  optimise: Optional[str], extra: Tuple[str, ...]) -> List[str]:
    cmd = [sys.executable, "-m", "ethosu.vela", str(tflite), "--accelerator-config", tgt.accelerator,
           "--system-config", tgt.system_config, "--memory-mode", tgt.memory_mode,
           "--config", str(Path(tgt.config).resolve()), "--output-dir", str(out_dir), "--show-cpu-operations"]
    if verbose_performance:
        cmd.append("--verbose-performance")
    if tgt.arena_cache_size is not None:
        cmd += ["--arena-cache-size", str(tgt.arena_cache_size)]
    if optimise:
        cmd += ["--optimise", optimise]
    return cmd + list(extra)


def run_vela(tflite_path, target, output_dir, *, verbose_performance: bool = True,
             fail_on_cpu_ops: bool = False, optimise: Optional[str] = None, config: Optional[str] = None,
             arena_cache_size: Optional[int] = None, extra_args=(), timeout: float = 600) -> VelaReport:
    """Compile ``tflite_path`` for ``target`` into ``output_dir`` and return what it costs.

    ``target`` is a named target, 'ACCELERATOR:SYSTEM:MEMORY', a dict or a Target. Files Vela
    writes (``<model>_vela.tflite``, the summary and per-layer CSVs) land in ``output_dir`` only
    once it succeeded. Raises FloatTensorError for a float model, VelaConfigError for a memory
    mode that does not fit, VelaError (with Vela's stderr) when Vela fails, CpuOpsError when
    ``fail_on_cpu_ops`` and some operator falls back to the CPU.
    """
    from ran_keras.export.flatbuffer import inspect_tflite
    if not vela_available():
        raise VelaNotInstalledError()
    tgt = resolve_target(target, config=config, arena_cache_size=arena_cache_size)
    tflite = Path(tflite_path)
    if not tflite.is_file():
        raise FileNotFoundError(f"TFLite file {str(tflite)!r} does not exist")
    info = inspect_tflite(tflite)
    if info.float_tensors:
        kinds = sorted({t.dtype for t in info.float_tensors})
        raise FloatTensorError(
            f"{tflite} is a float model ({len(info.float_tensors)} {'/'.join(kinds)} tensors, e.g. "
            f"{info.float_tensors[0].name!r}); Ethos-U runs int8 (and int16) models only, and Vela would leave "
            f"float operators on the CPU. Export it with int8 quantisation: `ran export MODEL`")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".vela-", dir=out))
    try:
        cmd = _vela_command(tflite, tgt, tmp, verbose_performance, optimise, tuple(extra_args))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env=dict(os.environ, PYTHONHASHSEED="0"))
        except subprocess.TimeoutExpired:
            raise VelaError(f"Vela did not finish compiling {tflite.name} for {tgt.name} in {timeout:.0f} s") from None
        if proc.returncode != 0:
            detail = _failure_detail(proc.stderr or proc.stdout)
            raise VelaError(f"Vela failed (exit {proc.returncode}) compiling {tflite.name} for {tgt.name} "
                            f"({tgt.accelerator}, {tgt.system_config}, {tgt.memory_mode}):\n{detail}")
        summaries = list(tmp.glob("*_summary_*.csv"))
        if len(summaries) != 1:
            raise VelaError(f"Vela wrote no summary CSV for {tflite.name} ({tgt.name}); its output:\n"
                            f"{proc.stdout[-2000:]}{proc.stderr[-1000:]}")
        summary = parse_summary_csv(summaries[0])
        per_layer = list(tmp.glob("*_per-layer.csv"))
        layers = parse_per_layer_csv(per_layer[0]) if per_layer else []
        cpu_ops = parse_cpu_ops(proc.stdout, layers)
        files = {}
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
            key = ("summary_csv" if f in summaries else "per_layer_csv" if f.name.endswith("_per-layer.csv")
                   else "vela_tflite" if f.name.endswith("_vela.tflite") else f.name)
            files[key] = f.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cycles = int(float(summary["cycles_total"]))
    macs = int(float(summary["nn_macs"]))
    cap = float(summary.get("arena_cache_size") or 0) or None
    npu_match = _NPU_COUNT_RE.search(proc.stdout)
    dram, flash = float(summary["dram_memory_used"]), float(summary["off_chip_flash_memory_used"])
    report = VelaReport(
        network=tflite.stem, target=tgt.name, accelerator=tgt.accelerator, system_config=tgt.system_config,
        memory_mode=tgt.memory_mode, config=Path(tgt.config).name, core_clock=float(summary["core_clock"]),
        peak_macs_per_cycle=tgt.peak_macs_per_cycle, cycles_total=cycles,
        cycles_npu=int(float(summary["cycles_npu"])), inference_time=float(summary["inference_time"]),
        inferences_per_second=float(summary["inferences_per_second"]), nn_macs=macs,
        sram_used=float(summary["sram_memory_used"]), off_chip_used=dram + flash, dram_used=dram,
        off_chip_flash_used=flash, sram_cap=None if cap is None or cap >= UNCAPPED_KIB else cap,
        utilisation=utilisation(macs, cycles, tgt.peak_macs_per_cycle), cpu_ops=cpu_ops,
        npu_ops=int(npu_match.group(1)) if npu_match else 0, layers=layers, output_dir=str(output_dir),
        files=files, vela_version=vela_version())
    count = _CPU_COUNT_RE.search(proc.stdout)
    if count and int(count.group(1)) != len(cpu_ops):  # never silently under-count CPU fallbacks
        report.cpu_ops += [{"op": "?", "name": f"(unlisted CPU operator {i + 1})", "reason": "see Vela's output"}
                           for i in range(int(count.group(1)) - len(cpu_ops))]
    if fail_on_cpu_ops and report.cpu_ops:
        raise CpuOpsError(cpu_ops_message(report))
    return report


def _failure_detail(text: str, lines: int = 25) -> str:
    """Vela's own error line when it has one (not its usage text), else the tail of its output."""
    rows = text.strip().splitlines()
    errors = [r for r in rows if r.startswith("vela: error:")]
    return "\n".join(errors or rows[-lines:])


def cpu_ops_message(report: VelaReport) -> str:
    ops = "; ".join(f"{o['op']} {o['name']!r} ({o['reason']})" for o in report.cpu_ops[:8])
    more = f" and {len(report.cpu_ops) - 8} more" if len(report.cpu_ops) > 8 else ""
    return (f"{report.network} on {report.target}: {len(report.cpu_ops)} operator(s) fall back to the CPU and "
            f"cost 0 cycles in Vela's estimate, so its FPS is too optimistic: {ops}{more}")
