"""The code's layout rules: no import circle in vmsjax/, no file over 500 lines.

Imports are read with `ast` from every module of the package, wherever they are
(module level, inside functions, under TYPE_CHECKING): a circle through a function-
level import is still a circle for whoever reads the code.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vmsjax"
MAX_LINES = 500
# The GBVS port follows the reference implementation's structure, step by step.
LONG_ALLOWED = {"vmsjax/saliency.py"}


def _modules() -> dict[str, Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _owner(name: str, modules: dict[str, Path]) -> str | None:
  """The module of `modules` that `name` (a module or a name inside one) belongs to."""
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def import_graph() -> dict[str, set[str]]:
  """module -> the vmsjax modules it imports."""
  modules = _modules()
  graph: dict[str, set[str]] = {m: set() for m in modules}
  for module, path in modules.items():
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      names: list[str] = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
          base = ".".join([*anchor, base] if base else anchor)
        names = [f"{base}.{a.name}" for a in node.names]
      for name in names:
        target = _owner(name, modules) if name.startswith("vmsjax") else None
        if target and target != module and target != "vmsjax":
          graph[module].add(target)
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  found: list[list[str]] = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_cycle_finder_finds_a_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert cycles(graph) == [["a", "b", "c"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package():
  graph = import_graph()
  assert "vmsjax.step" in graph and "vmsjax.factory" in graph["vmsjax.step"]
  assert cycles(graph) == []


def test_no_file_over_500_lines():
  long = {
    str(p.relative_to(ROOT)): n
    for folder in ("vmsjax", "experiments")
    for p in (ROOT / folder).rglob("*.py")
    if (n := len(p.read_text().splitlines())) > MAX_LINES
  }
  assert set(long) <= LONG_ALLOWED, long
