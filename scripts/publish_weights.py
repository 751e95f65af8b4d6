#!/usr/bin/env python
"""Upload converted weights and their cards to the Hugging Face hub, one repository per weight.

    python scripts/publish_weights.py converted/ --org bcos-zoo --dry-run   # show what would be uploaded
    HF_TOKEN=... python scripts/publish_weights.py converted/ --org bcos-zoo

For every ``<arch>.<tag>.safetensors`` in the directory (made by ``bcos-zoo convert``) whose
name is a registered weight, the repository ``<org>/<arch>.<tag>`` receives ``model.safetensors``,
``README.md`` (the model card, listing the hub file as the first source) and ``config.json`` (the
record). At the end it prints the lines to paste into ``PUBLISHED`` in
``bcos_zoo/pretrained/official.py``, which makes the hub files the first source of those records.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import logging
import sys
from pathlib import Path

import bcos_zoo
from bcos_zoo.cards import render_card
from bcos_zoo.files import sha256_file

log = logging.getLogger("publish_weights")


def plan(directory: Path, org: str, pattern: str = "*") -> list[tuple[str, dict[str, bytes | Path], str]]:
    """``[(repo_id, {path in repo: local file or bytes}, sha256 of model.safetensors)]`` for the directory."""
    uploads = []
    for path in sorted(directory.glob("*.safetensors")):
        name = path.name[: -len(".safetensors")]
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        if name not in bcos_zoo.list_weights():
            log.warning("skipping %s: %s is not a registered weight", path, name)
            continue
        header = bcos_zoo.read_header(path).weight
        if header != name:
            raise ValueError(f"{path} says it holds {header!r}, not {name!r}; convert it again")
        digest, repo_id = sha256_file(path), f"{org}/{name}"
        spec = bcos_zoo.get_weights(name)
        others = [s for s in spec.sources if not (isinstance(s, bcos_zoo.HubFile) and s.repo_id == repo_id)]
        published = dataclasses.replace(spec, sources=(bcos_zoo.HubFile(repo_id, sha256=digest), *others))
        files: dict[str, bytes | Path] = {
            "model.safetensors": path,
            "README.md": render_card(published).encode(),
            "config.json": published.to_json().encode(),
        }
        uploads.append((repo_id, files, digest))
    return uploads


def upload(uploads: list[tuple[str, dict[str, bytes | Path], str]], *, private: bool, token: str | None) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    for repo_id, files, _ in uploads:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content if isinstance(content, bytes)
                                         else str(content)) for name, content in files.items()]  # fmt: skip
        api.create_commit(
            repo_id, operations=operations, commit_message=f"bcos-zoo {bcos_zoo.__version__}: upload weights"
        )
        log.info("uploaded %s", repo_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="directory with <arch>.<tag>.safetensors files")
    parser.add_argument("--org", default="bcos-zoo", help="hub user or organisation (default: bcos-zoo)")
    parser.add_argument("--weights", default="*", help="fnmatch pattern of weight names to publish")
    parser.add_argument("--private", action="store_true", help="create private repositories")
    parser.add_argument("--token", default=None, help="hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be uploaded, upload nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uploads = plan(args.directory, args.org, args.weights)
    for repo_id, files, _ in uploads:
        for name, content in files.items():
            size = len(content) if isinstance(content, bytes) else content.stat().st_size
            print(f"{'would upload' if args.dry_run else 'upload'} {repo_id}/{name} ({size:,} bytes)")
    if not args.dry_run:
        upload(uploads, private=args.private, token=args.token)
    print("# PUBLISHED entries for bcos_zoo/pretrained/official.py:")
    for repo_id, _, digest in uploads:
        print(f'    "{repo_id.split("/", 1)[1]}": "{digest}",')
    return 0


if __name__ == "__main__":
    sys.exit(main())
