import json
import os
import subprocess
import sys


def test_benchmark_train_prints_a_json_line(repo_root):
    result = subprocess.run(
        [sys.executable, "tools/benchmark_train.py", "--config_file=configs/tiny_gpt.yaml",
         "--steps=6", "--window=2", "--params_override=data.sequence_length=32,"
         "data.global_batch_size=4,trainer.jit_compile=false,trainer.warmup_steps=0,"
         "model.num_layers=1,model.num_heads=2,model.hidden_dim=32,model.intermediate_dim=64"],
        cwd=repo_root, capture_output=True, text=True, timeout=180,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(repo_root)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["benchmark"] == "train" and record["tokens_per_second"] > 0
    assert record["windows"] == 2 and record["flops_per_token"] > 0
    assert "CPU" in record["machine"] or "GPU" in record["machine"]
