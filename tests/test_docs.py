"""The docs a user reads stand on their own and stay in step with the code."""
import dataclasses
import re
from pathlib import Path

from sparse_gpt.config import Config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench").rglob("*.md"))]


def _config_keys() -> set[str]:
    keys = set()
    for section in dataclasses.fields(Config):
        keys |= {f"{section.name}.{f.name}" for f in dataclasses.fields(section.type if isinstance(section.type, type)
                                                                       else section.default_factory)}
    return keys


def test_readme_config_table_names_every_key():
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    documented = set()
    for row in rows:
        cell = row.split("|")[1]
        names = re.findall(r"`([a-z0-9_.]+)`", cell)
        if names and "." in names[0]:
            section = names[0].split(".")[0]
            # `model.n_layer` / `d_model` / `d_head`: later names share the first one's section
            documented |= {n if "." in n else f"{section}.{n}" for n in names}
    missing = sorted(_config_keys() - documented)
    assert not missing, f"config keys missing from the README's config table: {missing}"


def test_docs_do_not_point_outside_the_repository():
    """A clone of the project has no METHOD.md, no shared/ folder and no issue tracker."""
    pattern = re.compile(r"METHOD\.md|OPENAI_FORMAT\.md|\.\./shared|\bissues? #?\d+", re.IGNORECASE)
    sources = DOCS + sorted((ROOT / "sparse_gpt").rglob("*.py")) + sorted((ROOT / "configs").glob("*.yaml"))
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in sources
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "references a reader of the repository cannot follow:\n" + "\n".join(hits)


def test_relative_links_in_docs_resolve():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken
