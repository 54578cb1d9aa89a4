"""tools/chaos.py, bounded: random SIGKILL/SIGTERM to the workers of a local cluster,
restarts on another number of workers, and the final weights of an uninterrupted run."""

import re
import subprocess
import sys


def test_chaos_run_survives_random_kills_to_the_uninterrupted_weights(repo_root, tmp_path):
    result = subprocess.run(
        [sys.executable, "tools/chaos.py", "--workers=2", "--steps=60", "--checkpoint_every=10",
         "--kills=3", "--seed=3", "--elastic", "--window=2", "--timeout=400",
         f"--model_dir={tmp_path}"],
        cwd=repo_root, capture_output=True, text=True, timeout=480,
    )
    log = (tmp_path / "chaos.log").read_text() if (tmp_path / "chaos.log").exists() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + log[-3000:]
    survived = re.search(r"chaos: survived (\d+) kills over (\d+) attempts", result.stdout)
    assert survived and int(survived.group(1)) >= 1, result.stdout
    assert "final weights equal the uninterrupted run's" in result.stdout
