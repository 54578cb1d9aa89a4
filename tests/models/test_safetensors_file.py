"""tflm's safetensors reader and writer agree with the `safetensors` library, and bad files
are errors naming the file and tensor."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tflm.models.safetensors_file import (
    SafetensorsError,
    read_checkpoint_weights,
    read_safetensors,
    write_safetensors,
)


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal((3, 5)).astype(np.float32),
        "b": rng.standard_normal((5,)).astype(np.float64),
        "h": rng.standard_normal((2, 2)).astype(np.float16),
        "ids": np.arange(7, dtype=np.int64)[None],
        "flags": np.array([True, False, True]),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }


def test_reads_what_the_library_writes(tmp_path):
    path = str(tmp_path / "a.safetensors")
    tensors = _tensors()
    save_file(tensors, path, metadata={"format": "pt"})
    read = read_safetensors(path)
    assert sorted(read) == sorted(tensors)
    for name, value in tensors.items():
        assert read[name].dtype == value.dtype and read[name].shape == value.shape, name
        np.testing.assert_array_equal(read[name], value)


def test_library_reads_what_tflm_writes(tmp_path):
    path = str(tmp_path / "b.safetensors")
    tensors = _tensors()
    write_safetensors(path, tensors, metadata={"format": "pt"})
    read = load_file(path)
    for name, value in tensors.items():
        np.testing.assert_array_equal(read[name], value)


def test_bfloat16_is_widened_exactly(tmp_path):
    values = np.array([[1.5, -2.25], [3.0e38, 1e-38]], np.float32).astype(ml_dtypes.bfloat16)
    raw = values.view(np.uint16).tobytes()
    header = json.dumps({"x": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}})
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + raw)
    read = read_safetensors(str(path))["x"]
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, values.astype(np.float32))


def test_sharded_checkpoint(tmp_path):
    tensors = _tensors()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[:3], names[3:])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(tmp_path / file))
        weight_map.update({n: file for n in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    read = read_checkpoint_weights(str(tmp_path))
    assert sorted(read) == names
    weight_map[names[0]] = "model-00002-of-00002.safetensors"  # listed in the wrong shard
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(SafetensorsError, match=f"{names[0]!r} is listed in model-00002"):
        read_checkpoint_weights(str(tmp_path))


def test_truncated_file_names_the_tensor(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": np.zeros(4, np.float32), "big": np.ones((10, 10), np.float32)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(SafetensorsError, match=r"t\.safetensors: tensor 'big'.*truncated"):
        read_safetensors(str(path))


def test_garbage_and_unknown_dtypes(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"PK\x03\x04 this is a zip file, not safetensors")
    with pytest.raises(SafetensorsError, match="g.safetensors: header length"):
        read_safetensors(str(path))
    header = json.dumps({"x": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\x00")
    with pytest.raises(SafetensorsError, match="'x' has dtype 'F8_E4M3'"):
        read_safetensors(str(path))


def test_missing_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        read_checkpoint_weights(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(FileNotFoundError, match="pickled torch file"):
        read_checkpoint_weights(str(tmp_path))
