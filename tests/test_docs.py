"""Every file the README and docs/ name is in the repository (issue 21: the README pointed at a
METHOD.md that a fresh clone does not have). Raw datasets under ../shared are the one named
exception: tests and benchmarks read them, the default run does not."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FILE = re.compile(r"^[\w./-]+\.(?:py|ya?ml|md|sh|json|txt|toml|csv)$")
# Package-relative names in the prose (`train/api.py`) resolve against these folders too.
ROOTS = (REPO, REPO / "metaad_dist", REPO / "configs")


def named_files(doc: Path) -> set[str]:
    text = doc.read_text()
    links = {t for t in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in t}
    # Paths in backticks; a bare name (`report.md`) is an output a command writes, not a repo file.
    return links | {t for t in re.findall(r"`([^`\s]+)`", text) if "/" in t and FILE.match(t)}


def resolves(doc: Path, name: str) -> bool:
    return any((root / name).exists() for root in (doc.parent, *ROOTS))


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(REPO).as_posix())
def test_every_named_file_is_in_the_repository(doc):
    assert sorted(n for n in named_files(doc) if not resolves(doc, n)) == []
    assert "../shared" not in doc.read_text().replace("../shared/datasets", "")


def test_the_readme_links_the_method_and_architecture_docs():
    text = (REPO / "README.md").read_text()
    assert "(docs/method.md)" in text and "(docs/architecture.md)" in text
    assert "METHOD.md" not in text
