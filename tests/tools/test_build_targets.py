import subprocess
import sys


def test_build_file_is_up_to_date(repo_root):
    """BUILD has a target for every module and test, with deps from the imports."""
    result = subprocess.run(
        [sys.executable, "tools/build_targets.py", "--check"],
        cwd=repo_root, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_every_module_and_test_has_a_target(repo_root):
    build = (repo_root / "BUILD").read_text()
    for path in list((repo_root / "tflm").rglob("*.py")) + list((repo_root / "tests").rglob("test_*.py")):
        assert f'srcs = ["{path.relative_to(repo_root)}"]' in build, path
    assert 'name = "tflm-train"' in build
