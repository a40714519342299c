"""One-way layers, read from the source: every import of every Python file of the repository (top-level or inside a
function, absolute or relative) goes to its own package or a lower one, and no modules import each other in a cycle.

    modeling_lddetr < processing < hub_datasets < training_scripts < video_search < web_demo < the rest

The rest (benchmarks, tools, spaces, tests, scripts at the root) may import anything. `modeling_lddetr/` ships as
remote code with every saved model, so it imports only modules of its own folder, relatively.
"""

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("modeling_lddetr", "processing", "hub_datasets", "training_scripts", "video_search", "web_demo")
TOP = len(LAYERS)  # benchmarks, tools, spaces, tests and anything else
REMOTE_CODE = "modeling_lddetr"


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository
    line: int
    statement: str
    source: str  # the importing module, dotted
    target: str  # the imported module of the repository, dotted


def layer(module: str) -> int:
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else TOP


def python_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py outside hidden and build folders (`pkg/__init__.py` is `pkg`)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        skipped = [part for part in parts if part.startswith(".") or part in ("__pycache__", "build")]
        if skipped or any(part.endswith(".egg-info") for part in parts):
            continue
        names = list(parts[:-1]) + ([] if parts[-1] == "__init__.py" else [parts[-1][:-3]])
        modules[".".join(names)] = path
    return modules


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is a module of the repository."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path], root: Path) -> list[Import]:
    """The repository modules that one file imports, wherever the import statement stands."""
    package = _package_of(module, path)
    file = path.relative_to(root).as_posix()
    text = path.read_text(encoding="utf-8")
    found = []
    for node in ast.walk(ast.parse(text, filename=file)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".") if package else []
                if node.level - 1 > len(anchor):
                    raise AssertionError(f"{file}:{node.lineno}: relative import above the repository root")
                base = ".".join(anchor[: len(anchor) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module
            # `from pkg import name`: name is a submodule or something defined in pkg
            names = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
        else:
            continue
        statement = ast.get_source_segment(text, node) or ast.dump(node)
        for name in names:
            target = _resolve(name, modules)
            # a script's own folder is on sys.path (tests import `helpers`, a Space imports its neighbours)
            neighbour = f"{package}.{name.split('.')[0]}"
            if target is None and layer(module) == TOP and neighbour in modules and not getattr(node, "level", 0):
                target = _resolve(f"{package}.{name}", modules)
            if target is not None and target != module:
                found.append(Import(file, node.lineno, " ".join(statement.split()), module, target))
    return found


def all_imports(root: Path) -> list[Import]:
    modules = python_files(root)
    return [found for module, path in modules.items() for found in imports_of(module, path, modules, root)]


def layer_violations(imports: list[Import]) -> list[str]:
    problems = []
    for found in imports:
        where = f"{found.file}:{found.line}: `{found.statement}`"
        if found.source.split(".")[0] == REMOTE_CODE:
            relative = found.statement.startswith("from .") and not found.statement.startswith("from ..")
            if not relative or found.target.split(".")[0] != REMOTE_CODE:
                problems.append(f"{where} imports {found.target}: {REMOTE_CODE}/ (remote code) imports only its own "
                                "folder's modules, relatively")
        elif layer(found.target) > layer(found.source):
            problems.append(f"{where} imports {found.target}, a layer above {found.source.split('.')[0]} "
                            f"(order: {' < '.join(LAYERS)} < the rest)")
    return problems


def import_cycle(imports: list[Import]) -> list[Import] | None:
    """The imports of one cycle between modules, in order, or None."""
    edges: dict[str, list[Import]] = {}
    for found in imports:
        edges.setdefault(found.source, []).append(found)
    state: dict[str, str] = {}  # "open" while on the path, "done" once every path from it is explored
    path: list[Import] = []

    def visit(module: str) -> list[Import] | None:
        state[module] = "open"
        for found in edges.get(module, []):
            if state.get(found.target) == "open":
                start = next((i for i, step in enumerate(path) if step.source == found.target), len(path))
                return path[start:] + [found]
            if found.target not in state:
                path.append(found)
                cycle = visit(found.target)
                if cycle:
                    return cycle
                path.pop()
        state[module] = "done"
        return None

    for module in sorted(edges):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def describe_cycle(cycle: list[Import]) -> str:
    steps = "\n  ".join(f"{step.file}:{step.line}: `{step.statement}` -> {step.target}" for step in cycle)
    return f"import cycle {' -> '.join([step.source for step in cycle] + [cycle[0].source])}:\n  {steps}"


def test_no_import_goes_up_a_layer():
    problems = layer_violations(all_imports(REPO))
    assert not problems, problems[0] + (f"\n(and {len(problems) - 1} more)" if len(problems) > 1 else "")


def test_no_import_cycle_between_modules():
    cycle = import_cycle(all_imports(REPO))
    assert cycle is None, describe_cycle(cycle)


def test_modeling_lddetr_is_one_flat_folder():
    files = (REPO / REMOTE_CODE).glob("*/**/*.py")
    nested = [path.relative_to(REPO).as_posix() for path in files if "__pycache__" not in path.parts]
    assert nested == [], f"{REMOTE_CODE}/ ships as one flat folder of remote code: {nested[0] if nested else ''}"


# ---------------------------------------------------------------------------------------- the checks can fail


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    "importer, text, named",
    [
        ("processing/reader.py", "from hub_datasets.hub import load\n", "processing/reader.py:2: `from hub_datasets"),
        ("processing/reader.py", "def f():\n    import training_scripts.train\n", "processing/reader.py:3: `import"),
        ("hub_datasets/sub/deep.py", "from ...training_scripts import train\n", "hub_datasets/sub/deep.py:1"),
        ("hub_datasets/hub.py", "from web_demo import app\n", "imports web_demo.app, a layer above hub_datasets"),
        ("modeling_lddetr/model.py", "from processing import reader\n", "modeling_lddetr/model.py:2"),
        ("modeling_lddetr/model.py", "from modeling_lddetr import other\n", "(remote code) imports only"),
    ],
)
def test_an_import_up_a_layer_is_named(tmp_path, importer, text, named):
    files = {
        "modeling_lddetr/__init__.py": "", "modeling_lddetr/other.py": "",
        "modeling_lddetr/model.py": "from . import other\n",
        "processing/__init__.py": "", "processing/reader.py": "from modeling_lddetr import model\n",
        "hub_datasets/__init__.py": "", "hub_datasets/hub.py": "from processing.reader import x\n",
        "hub_datasets/sub/__init__.py": "", "hub_datasets/sub/deep.py": "",
        "training_scripts/__init__.py": "", "training_scripts/train.py": "from hub_datasets import hub\n",
        "web_demo/__init__.py": "", "web_demo/app.py": "", "tests/test_x.py": "import web_demo.app\nimport helpers\n",
        "tests/helpers.py": "from training_scripts import train\n",
    }
    root = write_tree(tmp_path, files)
    assert layer_violations(all_imports(root)) == [] and import_cycle(all_imports(root)) is None
    (root / importer).write_text((root / importer).read_text() + text)
    problems = layer_violations(all_imports(root))
    assert len(problems) == 1 and named in problems[0], problems


def test_an_import_cycle_is_named_with_its_lines(tmp_path):
    root = write_tree(tmp_path, {
        "hub_datasets/__init__.py": "from .hub import load\n",
        "hub_datasets/hub.py": "import json\n",
        "hub_datasets/build.py": "from .hub import load\n",
        "hub_datasets/videos.py": "from . import build\n",
    })
    assert import_cycle(all_imports(root)) is None  # a package importing its modules is no cycle
    (root / "hub_datasets/build.py").write_text("from .hub import load\n\n\ndef main():\n    from .videos import run\n")
    cycle = describe_cycle(import_cycle(all_imports(root)))
    assert "hub_datasets.build -> hub_datasets.videos -> hub_datasets.build" in cycle
    assert "hub_datasets/build.py:5: `from .videos import run`" in cycle and "hub_datasets/videos.py:1" in cycle
