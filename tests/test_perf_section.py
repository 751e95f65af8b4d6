"""The README's performance block is generated from the committed benchmark JSON files."""

from __future__ import annotations

import json

import pytest


def _run(ratio: float, date: str) -> dict:
    machine = {"cpu": "Test CPU", "cores": 2, "threads": 2, "torch": "2.x", "python": "3.11"}
    return {"script": "bench_inference.py", "command": "python scripts/bench_inference.py --threads 2", "date": date,
            "machine": machine, "ms": {}, "ratios": {"forward_bs1_vs_torchvision": ratio, "new_key": 2.0}}  # fmt: skip


def test_readme_block_matches_committed_benchmarks(load_script) -> None:
    gen = load_script("gen_perf_section")
    assert gen.main(["--check"]) == 0, "README.md is stale: run python scripts/gen_perf_section.py"


def test_block_shows_ranges_goals_and_machine(load_script, tmp_path) -> None:
    gen = load_script("gen_perf_section")
    for i, ratio in enumerate([1.2345, 1.1]):
        (tmp_path / f"run{i}.json").write_text(json.dumps(_run(ratio, f"2026-01-0{i + 1}")))
    block = gen.render(gen.load_runs(tmp_path))
    assert "| ResNet-50 forward bs 1, ours ÷ torchvision eager | 1.10–1.23× | ≤ 1.15× | 2 |" in block
    assert "| `new_key` | 2.00× |  | 2 |" in block
    assert "Test CPU, 2 threads of 2 cores" in block and "python scripts/bench_inference.py --threads 2" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{gen.BEGIN}\nold\n{gen.END}\noutro\n")
    assert gen.main(["--check", "--benchmarks", str(tmp_path), "--readme", str(readme)]) == 1
    assert gen.main(["--benchmarks", str(tmp_path), "--readme", str(readme)]) == 0
    assert readme.read_text() == f"intro\n{gen.BEGIN}\n{block}\n{gen.END}\noutro\n"
    assert gen.main(["--check", "--benchmarks", str(tmp_path), "--readme", str(readme)]) == 0


def test_missing_markers_or_runs_say_what_to_do(load_script, tmp_path) -> None:
    gen = load_script("gen_perf_section")
    with pytest.raises(SystemExit, match="no benchmark JSON files"):
        gen.load_runs(tmp_path)
    with pytest.raises(SystemExit, match="has no performance block"):
        gen.rewrite("no markers here", "block")
