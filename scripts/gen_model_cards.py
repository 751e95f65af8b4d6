#!/usr/bin/env python
"""Generate ``model_cards/<arch>.<tag>.md`` and the README model table from the weights registry.

    python scripts/gen_model_cards.py           # write the cards and the README table
    python scripts/gen_model_cards.py --check   # exit 1 if anything is out of date (a test runs this)

The cards carry Hugging Face YAML front matter, so the same file is a hub repository's README.md
(``scripts/publish_weights.py`` uploads it). The README table is the region between
``<!-- model-table:start -->`` and ``<!-- model-table:end -->``; everything around it is hand-written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bcos_zoo import get_weights, list_weights
from bcos_zoo.cards import CARD_NAME, TABLE_END, TABLE_START, render_card, render_table

log = logging.getLogger("gen_model_cards")

ROOT = Path(__file__).resolve().parents[1]


def _readme_text(current: str | None, table: str) -> str:
    if current is None:
        return table + "\n"
    if TABLE_START not in current or TABLE_END not in current:
        return current.rstrip("\n") + "\n\n" + table + "\n"
    head, _, rest = current.partition(TABLE_START)
    return head + table + rest.partition(TABLE_END)[2]


def expected_files(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file and its content."""
    specs = [get_weights(name) for name in list_weights()]
    files = {root / "model_cards" / f"{spec.name}.md": render_card(spec) for spec in specs}
    readme = root / "README.md"
    files[readme] = _readme_text(readme.read_text() if readme.is_file() else None, render_table(specs))
    return files


def stale_files(root: Path = ROOT) -> tuple[dict[Path, str], list[Path]]:
    """(files to write because they are missing or differ, generated cards no weight has any more)."""
    expected = expected_files(root)
    changed = {p: text for p, text in expected.items() if not p.is_file() or p.read_text() != text}
    cards = root / "model_cards"
    orphans = (
        sorted(p for p in cards.glob("*.md") if CARD_NAME.match(p.name) and p not in expected) if cards.is_dir() else []
    )
    return changed, orphans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report out-of-date files and exit 1 instead of writing")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    changed, orphans = stale_files(args.root)
    if args.check:
        for path in [*changed, *orphans]:
            log.error("out of date: %s", path.relative_to(args.root))
        if changed or orphans:
            log.error("run: python scripts/gen_model_cards.py")
        return 1 if changed or orphans else 0
    for path, text in changed.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        log.info("wrote %s", path.relative_to(args.root))
    for path in orphans:
        path.unlink()
        log.info("removed %s", path.relative_to(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
