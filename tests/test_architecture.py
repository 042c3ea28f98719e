"""The import rules of docs/architecture.md ("Who may import whom"), read from the source
with ``ast``: every import counts, at module level or inside a function, except those under
``if TYPE_CHECKING:`` (they exist for the type checker only: no dependency at run time)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import dreamsearch

PACKAGE = Path(dreamsearch.__file__).parent

#: What every ``cli/`` module may import: the service layer, the rendering modules, and
#: light names read while the command line is parsed.
CLI_MAY_IMPORT = frozenset(
    {
        "dreamsearch.api",
        "dreamsearch.cli.common",
        "dreamsearch.contact_sheet",
        "dreamsearch.defaults",
        "dreamsearch.display",
        "dreamsearch.documents",
        "dreamsearch.errors",
        "dreamsearch.low_memory",
        "dreamsearch.models.registry",
        "dreamsearch.output",
        "dreamsearch.previews",
    }
)
#: The few modules that may import more, and what (``.*``: the package and its modules).
#: Each is still needed: the test fails when one is no longer used, so the list only shrinks.
CLI_ALSO = {
    "cli/__init__.py": {"dreamsearch", "dreamsearch.cli.*"},  # the version, and the commands it groups
    "cli/serve.py": {"dreamsearch.server.*", "dreamsearch.watcher.loop"},  # it starts the server and its watcher
    "cli/watch.py": {"dreamsearch.watcher.loop"},
    "cli/models.py": {  # weights on disk and the backends' agreement: no library involved
        "dreamsearch.images",
        "dreamsearch.models",
        "dreamsearch.models.agreement",
        "dreamsearch.models.weights",
        "dreamsearch.scan",
    },
    # a text model's name, a file kind's words, and the query files sent to a running server
    # before the catalog layer is imported (``warm.ask_ahead``)
    "cli/search.py": {"dreamsearch.models", "dreamsearch.reading", "dreamsearch.warm"},
    "cli/library.py": {"dreamsearch.status"},  # status_lines
    # a new library's models compiled before the catalog layer is imported (``models.load_ahead``)
    "cli/index.py": {"dreamsearch.layout", "dreamsearch.models"},
}
#: The shells and the package's front doors; every other module is a domain module.
SHELLS = ("api.py", "cli/", "server/", "__init__.py", "__main__.py")


def modules() -> dict[str, ast.Module]:
    """Every module of the package by path relative to it (posix), parsed."""
    return {path.relative_to(PACKAGE).as_posix(): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}


def imports(relpath: str, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """``(line, module)`` for each dreamsearch module ``tree`` imports at run time (the
    package imports absolutely: a relative import fails here)."""
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names if _ours(alias.name))
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"dreamsearch/{relpath}:{node.lineno}: a relative import"
            if not _ours(node.module or ""):
                continue
            # ``from dreamsearch import api`` imports the module ``dreamsearch.api``
            named = {f"{node.module}.{alias.name}" for alias in node.names}
            yield from ((node.lineno, m) for m in sorted({m if _exists(m) else str(node.module) for m in named}))


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _ours(module: str) -> bool:
    return module == "dreamsearch" or module.startswith("dreamsearch.")


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def _allowed(module: str, patterns: set[str] | frozenset[str]) -> str | None:
    """The pattern that lets ``module`` in, if any."""
    for pattern in patterns:
        if module == pattern.removesuffix(".*") or (pattern.endswith(".*") and module.startswith(pattern[:-1])):
            return pattern
    return None


def test_cli_modules_import_only_the_api_and_the_rendering_modules():
    forbidden, used = [], set()
    for relpath, tree in modules().items():
        if not relpath.startswith("cli/"):
            continue
        also = CLI_ALSO.get(relpath, set())
        for line, module in imports(relpath, tree):
            if _allowed(module, CLI_MAY_IMPORT):
                continue
            pattern = _allowed(module, also)
            if pattern is None:
                forbidden.append(f"dreamsearch/{relpath}:{line} imports {module}")
            used.add((relpath, pattern))
    assert forbidden == [], "the CLI goes through dreamsearch.api (docs/architecture.md):\n" + "\n".join(forbidden)
    unused = sorted(f"{r}: {p}" for r, patterns in CLI_ALSO.items() for p in patterns if (r, p) not in used)
    assert unused == [], "exceptions no longer needed: remove them here and in docs/architecture.md"


def test_domain_modules_never_import_the_shells():
    found = [
        f"dreamsearch/{relpath}:{line} imports {module}"
        for relpath, tree in modules().items()
        if not relpath.startswith(SHELLS)
        for line, module in imports(relpath, tree)
        if _allowed(module, {"dreamsearch.api", "dreamsearch.cli.*", "dreamsearch.server.*"})
    ]
    assert found == []


def test_only_the_shells_import_the_command_line_and_the_server():
    found = [
        f"dreamsearch/{relpath}:{line} imports {module}"
        for relpath, tree in modules().items()
        for line, module in imports(relpath, tree)
        if (_allowed(module, {"dreamsearch.cli.*"}) and not relpath.startswith(("cli/", "__main__.py")))
        or (_allowed(module, {"dreamsearch.server.*"}) and not relpath.startswith(("server/", "cli/serve.py")))
    ]
    assert found == []


def test_the_catalog_and_the_indexes_know_nothing_of_models_and_images():
    pictures = {"dreamsearch.models.*", "dreamsearch.images"}
    stores = {"dreamsearch.catalog.*", "dreamsearch.vector_index.*", "dreamsearch.migrations.*"}
    found = [
        f"dreamsearch/{relpath}:{line} imports {module}"
        for relpath, tree in modules().items()
        for line, module in imports(relpath, tree)
        if (relpath.startswith(("catalog/", "vector_index/")) and _allowed(module, pictures))
        or (relpath.startswith("models/") and _allowed(module, stores))
    ]
    assert found == []
