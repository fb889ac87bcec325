"""The package's modules form a pipeline: no module imports a stage that comes after its own.

Data flows config -> data -> model -> training -> tasks -> pruning -> circuit -> explanations ->
pictures -> the pipeline that strings them together. A later stage may use an earlier one, never the
reverse, so each stage can be read, tested and replaced knowing only what lies below it. Command-line
entry points (`__main__.py`) sit on top of everything and are exempt.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sparse_gpt"

# Stage of each top-level module or subpackage of sparse_gpt, in the order data flows.
STAGES = [
    {"config", "fileio", "tensor_cache", "cli"},   # settings, durable files, command-line basics
    {"corpus", "tokenizer"},                       # where text comes from, how it is cut
    {"data"},                                      # token cache, batches, validation windows
    {"topk", "sink_attention", "model", "flops"},  # exact top-k and attention kernels; the network
    {"nodes", "sparsity"},                         # node addressing; weight top-k and the optimiser
    {"checkpoint", "openai_format", "loading"},    # weights on disk, ours and OpenAI's
    {"plots", "trainer"},                          # the training loop
    {"tasks"},                                     # the binary tasks
    {"prune"},                                     # masks, the task objective, the pruner
    {"circuit"},                                   # the circuit artefact, its validation and node details
    {"explain", "intervene"},                      # reading single nodes
    {"render", "export"},                          # pictures of a circuit; other viewers' formats
    {"pipeline"},                                  # checkpoint + task -> circuit directory
]


def stage_of(module: str) -> int:
    """Stage index of a dotted module name inside sparse_gpt ('sparse_gpt.prune.masks' -> prune's)."""
    head = module.split(".")[1]
    # modules split out of one job keep its stage: checkpoint_codec.py, checkpoint_io.py, ...
    for i, names in enumerate(STAGES):
        if head in names or any(head.startswith(n + "_") for n in names):
            return i
    raise AssertionError(f"sparse_gpt.{head} has no stage in tests/test_layering.py: add it where it belongs")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of sparse_gpt code in a file, nested ones included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("sparse_gpt.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "sparse_gpt":  # `from sparse_gpt import x` / `from .. import x`: x is the module
                found += [(node.lineno, f"sparse_gpt.{a.name}") for a in node.names if not a.name.startswith("__")]
            elif target.startswith("sparse_gpt."):
                found.append((node.lineno, target))
    return found


def test_every_module_has_a_stage():
    for path in PACKAGE.rglob("*.py"):
        if path != PACKAGE / "__init__.py":
            stage_of(module_name(path))


def test_no_module_imports_a_later_stage():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py" or path == PACKAGE / "__init__.py":
            continue  # entry points and the package facade may use every stage
        own = stage_of(module_name(path))
        for line, target in imported_modules(path):
            if stage_of(target) > own:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not violations, "imports against the data flow:\n" + "\n".join(violations)


def test_the_checker_resolves_relative_imports(tmp_path):
    """The rule is not vacuous: relative imports, nested ones included, resolve to real modules."""
    pkg = tmp_path / "sparse_gpt" / "render"
    pkg.mkdir(parents=True)
    src = pkg / "viewer.py"
    src.write_text("from ..prune.masks import gated\nfrom . import layout\n"
                   "def f():\n    from sparse_gpt import pipeline\n")
    global PACKAGE
    real, PACKAGE = PACKAGE, tmp_path / "sparse_gpt"
    try:
        found = [t for _, t in imported_modules(src)]
    finally:
        PACKAGE = real
    assert found == ["sparse_gpt.prune.masks", "sparse_gpt.render", "sparse_gpt.pipeline"]
    assert stage_of("sparse_gpt.pipeline") > stage_of("sparse_gpt.render") > stage_of("sparse_gpt.prune.masks")
    assert stage_of("sparse_gpt.checkpoint_codec") == stage_of("sparse_gpt.checkpoint")


def test_readers_of_a_circuit_do_not_reach_into_pruning():
    """Explanations, interventions and pictures work from the Circuit and the node layout alone."""
    offenders = []
    for sub in ("explain", "intervene", "render"):
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            offenders += [f"{path.relative_to(PACKAGE.parent)}:{line} imports {t}"
                          for line, t in imported_modules(path) if t.startswith("sparse_gpt.prune")]
    assert not offenders, "\n".join(offenders)
