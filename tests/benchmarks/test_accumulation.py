"""Smoke test of benchmarks/accumulation.py: its three setups run (tiny model, one timed
step each, fresh processes) and report time and memory. Nothing is compared to a threshold."""

from benchmarks.accumulation import SETUPS, main, table


def test_quick_run_reports_every_setup(tmp_path):
    results = main(["--quick", "--steps", "1", "--warmup", "1", "--work", str(tmp_path)])
    assert set(results) == set(SETUPS)
    for r in results.values():
        assert r["step_s"] > 0 and r["peak_rss_mb"] >= r["rss_before_mb"] > 0
    assert "| 4x16 whole-batch negatives |" in table(results)
