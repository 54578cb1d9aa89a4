"""Converts a Hugging Face checkpoint folder or a keras-hub preset folder into a tflm model_dir,
and a tflm model_dir back into a Hugging Face folder.

    python tools/convert_checkpoint.py --input_dir=bert-base-uncased --output_dir=runs/bert
    python tools/convert_checkpoint.py --to=huggingface --input_dir=runs/bert --output_dir=hf/bert

The input is a folder as `transformers` saves it: `config.json`,
`model.safetensors` (or shards and `model.safetensors.index.json`) and the
tokenizer files (`vocab.txt` + `tokenizer_config.json` for BERT, `vocab.json` +
`merges.txt` for GPT-2, `tokenizer.model` for Llama 2 and Mistral, `tokenizer.json` for
Llama 3 and Qwen2); BART, T5, Llama, Mistral
and Qwen2 checkpoints and sentence-transformers BERT folders load too. A keras-hub
preset folder (as `save_to_preset` writes it: `config.json` naming a keras-hub
backbone, `model.weights.h5`, `tokenizer.json` and `assets/tokenizer/`) of GPT-2,
BERT, Llama or Mistral converts the same way; the tool tells the two kinds apart. The output
holds `params.yaml`, `tokenizer/`, `model.keras` and `conversion.json`: fine-tune
from it with `model.init_checkpoint=<output_dir>`, evaluate it with `tflm-eval`,
export it with `tflm-export`. The same as the library call
`tflm.tasks.convert_checkpoint(input_dir, output_dir)`.

With `--to=huggingface` the input is a tflm model_dir (a BERT-shaped masked LM or classifier,
or a GPT-2-, Llama-, Mistral- or Qwen2-shaped causal LM) and the output a Hugging Face folder
(`config.json`, `model.safetensors`, the tokenizer files: a SentencePiece `tokenizer.model` or
a byte-level BPE `tokenizer.json` for the Llama family) that `transformers` loads; a model the
Hugging Face architectures cannot express is an error naming the key. The same as
`tflm.tasks.export_to_huggingface(input_dir, output_dir)`.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input_dir", required=True,
                        help="The Hugging Face checkpoint or keras-hub preset folder (with "
                             "--to=huggingface: the tflm model_dir).")
    parser.add_argument("--output_dir", required=True, help="The folder to write (new).")
    parser.add_argument("--to", default="tflm", choices=("tflm", "huggingface"),
                        help="tflm: Hugging Face or keras-hub folder -> model_dir; "
                             "huggingface: a model_dir -> a Hugging Face folder (BERT, GPT-2, "
                             "Llama, Mistral, Qwen2).")
    parser.add_argument("--dtype", default=None,
                        help="Dtype policy of the converted model, e.g. mixed_bfloat16.")
    args = parser.parse_args(argv)

    from tflm.models.huggingface import CheckpointError
    from tflm.errors import TflmError
    from tflm.tasks import convert_checkpoint, export_to_huggingface
    from tflm.models.safetensors_file import SafetensorsError

    try:
        if args.to == "huggingface":
            export_to_huggingface(args.input_dir, args.output_dir)
        else:
            convert_checkpoint(args.input_dir, args.output_dir, dtype=args.dtype)
    except (TflmError, CheckpointError, SafetensorsError, FileNotFoundError, FileExistsError,
            ValueError) as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
