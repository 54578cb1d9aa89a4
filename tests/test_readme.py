"""The README's two commands: present, and the test command is what CI runs."""

import re


def _commands(repo_root):
    readme = (repo_root / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_exactly_two_commands(repo_root):
    commands = _commands(repo_root)
    assert len(commands) == 2
    assert all("\n" not in c for c in commands), "each command is one line"
    assert "tflm-train" in commands[0] and "configs/tiny_gpt.yaml" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command(repo_root):
    ci = (repo_root / ".ci" / "run").read_text()
    assert _commands(repo_root)[1] in ci.splitlines()


def test_main_command_config_exists(repo_root):
    assert (repo_root / "configs" / "tiny_gpt.yaml").exists()
