"""docs/design.md's map of the repository names every Python file there is, and no file that is gone."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAPPED_FOLDERS = (
    "modeling_lddetr", "processing", "hub_datasets", "training_scripts", "video_search", "web_demo", "benchmarks",
    "tests",
)


def python_files_in_the_map() -> set[str]:
    text = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    tree = re.search(r"## Package layout\n.*?```text\n(.*?)```", text, re.S).group(1)
    folders, files = [], set()
    for line in tree.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0].rstrip(",")
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name)
        elif name.endswith(".py"):
            files.add("".join(folders) + name)
    return files


def python_files_in_the_repository() -> set[str]:
    return {
        path.relative_to(REPO).as_posix()
        for folder in MAPPED_FOLDERS
        for path in (REPO / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }


def test_the_design_map_matches_the_tree():
    mapped, present = python_files_in_the_map(), python_files_in_the_repository()
    assert sorted(present - mapped) == [], "files missing from the map in docs/design.md"
    assert sorted(mapped - present) == [], "files in the map of docs/design.md that do not exist"
