"""How small LoRA fine-tuning is: trained parameters and factors file vs the whole model.

For each config, builds the task model with `model.finetune=lora` (default rank 8, targets
query and value) and with every target, counts the trained parameters against all of them,
and writes the factors file (`tflm.models.lora.save_lora`) and model.keras to compare sizes.

    python tools/lora_size.py                       # configs/tiny_gpt.yaml, configs/tiny_bert.yaml
    python tools/lora_size.py configs/tiny_gpt.yaml "model.num_layers=12,model.hidden_dim=768"
"""

import os
import sys
import tempfile

import numpy as np

from tflm.experiment import load_experiment
from tflm.models.lora import save_lora
from tflm.tasks import get_task

ALL = "[query,key,value,attention_output,feed_forward_in,feed_forward_out]"


def measure(config_file, override=""):
    for targets in ("[query,value]", ALL):
        config = load_experiment(config_file, ",".join(filter(None, [
            override, f"model.finetune=lora,model.lora_targets={targets}"])))
        model = get_task(config).build_model()
        total = model.count_params()
        trained = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        with tempfile.TemporaryDirectory() as scratch:
            factors = os.path.join(scratch, "lora.safetensors")
            whole = os.path.join(scratch, "model.keras")
            save_lora(model, factors)
            model.save(whole)
            sizes = os.path.getsize(factors), os.path.getsize(whole)
        print(f"{config_file} {override or ''} rank {config.model.lora_rank} targets {targets}: "
              f"{trained:,} of {total:,} parameters trained ({100 * trained / total:.2f}%); "
              f"lora.safetensors {sizes[0]:,} bytes, model.keras {sizes[1]:,} bytes "
              f"({100 * sizes[0] / sizes[1]:.2f}%)")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        measure(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
    else:
        for name in ("configs/tiny_gpt.yaml", "configs/tiny_bert.yaml"):
            measure(name)
