"""brainmvp_components.benchmarks.harness on trivial workloads: order, arithmetic, timing, memory, child processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from brainmvp_components.benchmarks import harness

ALLOCATE = "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.0)"
IDLE = "import time; time.sleep(1.0)"


def test_interleave_goes_round_by_round():
    assert list(harness.interleave(["a", "b", "c"], 2)) == [(0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b"), (1, "c")]
    assert list(harness.interleave(["a"], 0)) == []


def test_ratio_spread_and_fastest_against_known_numbers():
    ours, theirs = {"step_s": 2.0, "peak_gib": 3.0}, {"step_s": 8.0, "peak_gib": 1.5}
    assert harness.ratio(ours, theirs, ("step_s", "peak_gib")) == {"step_s": 0.25, "peak_gib": 2.0}
    assert harness.spread([4.0, 1.0, 2.0]) == 4.0
    results = [
        {"variant": "a", "s": 3.0, "round": 0},
        {"variant": "b", "s": 1.0, "round": 0},
        {"variant": "a", "s": 2.0, "round": 1},
        {"variant": "b", "error": "failed", "round": 1},
    ]
    best = harness.fastest(results, "variant", "s")
    assert {v: r["round"] for v, r in best.items()} == {"a": 1, "b": 0}


def test_markdown_table_lines():
    assert harness.table_header(["a", "b c"]) == "| a | b c |\n|---|---|"
    assert harness.table_row([1, "x"]) == "| 1 | x |"
    assert harness.markdown_table(["a", "b"], [[1, 2], [3, 4]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |"


def test_best_time_keeps_the_fastest_run():
    durations = iter([0.06, 0.01, 0.04])
    calls = []

    def work():
        calls.append(1)
        time.sleep(next(durations))

    best = harness.best_time(work, 3)
    assert len(calls) == 3
    assert 0.01 <= best < 0.04


def test_timer_wall_and_cpu():
    with harness.Timer() as timer:
        time.sleep(0.1)
    assert 0.1 <= timer.wall < 1.0
    assert timer.cpu < 0.05  # sleeping costs no CPU time
    wall = timer.wall
    time.sleep(0.01)
    assert timer.wall == wall  # frozen once the block has ended


def test_current_and_max_rss_of_this_process():
    before = harness.current_rss_bytes()
    block = b"\x01" * (256 * 2**20)  # written, so resident
    after = harness.current_rss_bytes()
    assert after - before > 200 * 2**20, (before, after)
    # the kernel keeps the two counters apart (statm pages against ru_maxrss) and they can differ by a few pages
    assert harness.max_rss_bytes() >= after - 16 * 2**20
    del block


@pytest.mark.parametrize("grandchild", [False, True])
def test_tree_peak_sees_a_child_that_allocates(grandchild):
    """~200 MB touched by the child (or by its own child) shows in the tree peak; an idle child's does not."""

    def peak(code: str) -> int:
        if grandchild:  # the allocation happens one level further down: the tree walk must reach it
            code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {code!r}])"
        return harness.watch_tree_peak(subprocess.Popen([sys.executable, "-c", code]), interval=0.05)

    busy, idle = peak(ALLOCATE), peak(IDLE)
    assert busy - idle > 150 * 2**20, (busy, idle)


def test_run_child_and_child_main(tmp_path):
    (tmp_path / "toy_child.py").write_text(
        "import sys\n"
        "from brainmvp_components.benchmarks import harness\n"
        "if __name__ == '__main__':\n"
        "    print('noise')\n"
        "    sys.exit(harness.child_main(sys.argv[1:], '--toy', lambda cfg: {'twice': 2 * cfg['x']}, 'TOY '))\n"
    )
    env = {"PYTHONPATH": str(tmp_path)}
    assert harness.run_child("toy_child", "--toy", {"x": 21}, "TOY ", env=env) == {"x": 21, "twice": 42}
    failed = harness.run_child("toy_child", "--other", {"x": 1}, "TOY ", env=env)
    assert failed["error"] == "subprocess exited with 2 without a result"
    assert harness.parse_result('TOY {"a": 1}', "TOY ") == {"a": 1} and harness.parse_result("TOY", "X") is None
    assert json.loads(json.dumps(harness.child_env()))["PYTHONPATH"].startswith(str(harness.PACKAGE_ROOT))
