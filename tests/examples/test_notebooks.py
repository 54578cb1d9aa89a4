"""The example notebook runs top to bottom (small settings), both ways: pretraining a tiny BERT
here, and importing a Hugging Face checkpoint folder."""

import json

import nbformat
import pytest
from nbclient import NotebookClient

from hf_fixtures import write_bert_folder


def _outputs(notebook):
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            yield output.get("text", "")


@pytest.mark.parametrize("start", ["pretrain", "import"])
def test_finetune_classifier_notebook(repo_root, tmp_path, monkeypatch, start):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("TFLM_EXAMPLE_STEPS", "30")
    monkeypatch.setenv("TFLM_EXAMPLE_PRETRAIN_STEPS", "10")
    monkeypatch.setenv("TFLM_EXAMPLE_RECORDS", "600")
    if start == "import":
        write_bert_folder(str(tmp_path / "hf_bert"))
        monkeypatch.setenv("TFLM_EXAMPLE_CHECKPOINT", str(tmp_path / "hf_bert"))
    else:
        monkeypatch.delenv("TFLM_EXAMPLE_CHECKPOINT", raising=False)
    notebook = nbformat.read(str(repo_root / "examples" / "finetune_classifier.ipynb"), as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "the notebook is committed without outputs"
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(repo_root / "examples")}}).execute()
    text = "".join(_outputs(notebook))
    result = json.loads(text.split("RESULT ", 1)[1].splitlines()[0])
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["macro_f1"] <= 1.0
    assert len(result["served_labels"]) == 4
    names = {"dialogue", "narration", "negative", "neutral", "positive"}
    assert set(result["served_labels"]) <= names
    if start == "import":
        assert "convert_checkpoint: " in text and "-> " in text
