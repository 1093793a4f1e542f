"""The package's shape: no import cycles, general modules free of model families, no shadowed
names, every package installed. Read from the source with ``ast``: function-level imports count."""

import ast
import configparser
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: source folders and the package names they are installed as (setup.cfg's package_dir)
SOURCES = {"ran_keras": ROOT / "ran_keras", "ran_keras.export": ROOT / "export",
           "ran_keras.experiments": ROOT / "experiments", "ran_keras.vela_configs": ROOT / "vela_configs"}
#: the modules that may import a model family (a module of ran_keras.models other than its store):
#: the zoo itself and the absl launchers of single experiments, which nothing else imports
MAY_IMPORT_FAMILIES = ("ran_keras.models", "ran_keras.registry", "ran_keras.experiments")


def _modules():
    """{module name: path} of every source file."""
    out = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "ran_keras" and parts and parts[0] in ("export", "experiments", "vela_configs"):
                continue
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _is_package(name):
    return MODULES[name].name == "__init__.py"


def _imports(name):
    """The project modules ``name`` imports (anywhere in the file, relative imports resolved)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    here = name if _is_package(name) else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here.split(".")[:len(here.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name and not name.startswith(m + ".")}


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycles():
    assert _cycles(GRAPH) == []


def test_a_planted_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_general_modules_do_not_import_model_families():
    family = [m for m in MODULES if m.startswith("ran_keras.models.") and m != "ran_keras.models._registry"]
    offenders = {name: sorted(GRAPH[name] & set(family)) for name in MODULES
                 if GRAPH[name] & set(family) and not name.startswith(MAY_IMPORT_FAMILIES)}
    assert offenders == {}


def test_no_module_shadows_the_standard_library():
    assert sorted({n.rsplit(".", 1)[-1] for n in MODULES} & set(sys.stdlib_module_names)) == []


def test_no_package_attribute_hides_one_of_its_modules():
    """``ran_keras.profile`` is a function, so no module may be called ``ran_keras/profile.py``; the
    same for every package's attributes and its submodules."""
    hidden = []
    for name in MODULES:
        if not _is_package(name):
            continue
        package = importlib.import_module(name)
        for info in pkgutil.iter_modules(package.__path__):
            attr = getattr(package, info.name, None)
            if attr is not None and getattr(attr, "__name__", None) != f"{name}.{info.name}":
                hidden.append(f"{name}.{info.name}")
    assert hidden == []


def test_every_package_is_installed():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    assert sorted(n for n in MODULES if _is_package(n)) == sorted(listed)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    if name.endswith("__main__"):
        pytest.skip("an entry point, run as a script")
    importlib.import_module(name)
