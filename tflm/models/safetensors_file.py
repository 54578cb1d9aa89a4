"""The `.safetensors` format (Hugging Face checkpoints), read and written with NumPy alone.

A file is an 8-byte little-endian header length, a JSON header mapping each
tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets
into the data that follows; an optional `"__metadata__"` of strings), then
the raw little-endian tensor bytes. A large checkpoint is split into shards
listed by `model.safetensors.index.json` (`{"weight_map": {name: file}}`).

Reading maps the file into memory (`np.memmap`): a 500 MB checkpoint costs
no copy until a tensor is used. bfloat16 tensors come back as float32
(NumPy has no bfloat16; the widening is exact). Every malformed header,
offset or dtype is a `SafetensorsError` naming the file and the tensor.

Example:
>>> tensors = read_safetensors("bert/model.safetensors")
>>> tensors["embeddings.word_embeddings.weight"].shape     # (30522, 768)
>>> write_safetensors("out.safetensors", {"w": np.zeros((2, 3), np.float32)})
"""

import json
import os
import struct

import numpy as np

from tflm.errors import MissingFileError, TflmError


INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"

# safetensors dtype name -> NumPy dtype ("BF16" is widened to float32 on read).
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


class SafetensorsError(TflmError, ValueError):
    """A safetensors file is malformed; the message names the file and, where known, the tensor."""


def _bf16_to_f32(raw):
    """bfloat16 bits (uint16) -> float32: they are the high half of the float32 bits."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _read_header(path):
    """`(header, header_size, file_size)` of one `.safetensors` file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise SafetensorsError(f"{path}: {size} bytes, too short for a safetensors header.")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > min(_MAX_HEADER, size - 8):
            raise SafetensorsError(f"{path}: header length {header_size} exceeds the file "
                                   f"({size} bytes): not a safetensors file, or truncated.")
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path}: the header is not valid JSON ({e}).") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object.")
    return header, header_size, size


def read_safetensors_metadata(path):
    """The `{str: str}` metadata of one `.safetensors` file (empty if it has none)."""
    return _read_header(path)[0].get("__metadata__") or {}


def read_safetensors(path):
    """`{name: np.ndarray}` of one `.safetensors` file (memory-mapped, read-only)."""
    header, header_size, size = _read_header(path)
    header.pop("__metadata__", None)
    data_start, data_size = 8 + header_size, size - 8 - header_size
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_size,)) \
        if data_size else np.zeros([0], np.uint8)
    tensors = {}
    for name, info in header.items():
        try:
            dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed entry {info!r}.") \
                from None
        if dtype_name != "BF16" and dtype_name not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {dtype_name!r}, which tflm "
                                   f"does not read (known: BF16, {', '.join(_DTYPES)}).")
        itemsize = 2 if dtype_name == "BF16" else _DTYPES[dtype_name].itemsize
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= data_size or end - begin != count * itemsize:
            raise SafetensorsError(
                f"{path}: tensor {name!r} ({dtype_name} {list(shape)}) has data offsets "
                f"[{begin}, {end}] that do not fit its size or the file's {data_size} data bytes "
                "(truncated file?).")
        raw = data[begin:end]
        if dtype_name == "BF16":
            tensors[name] = _bf16_to_f32(raw.view("<u2")).reshape(shape)
        else:
            tensors[name] = raw.view(_DTYPES[dtype_name]).reshape(shape)
    return tensors


def write_safetensors(path, tensors, metadata=None):
    """Writes `{name: array}` as one `.safetensors` file (what `read_safetensors` and the
    `safetensors` library read). `metadata`: optional `{str: str}`."""
    arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, value in arrays.items():
        dtype = value.dtype.newbyteorder("<") if value.dtype.byteorder == ">" else value.dtype
        if dtype not in _NAMES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {value.dtype}, which "
                                   "safetensors cannot hold.")
        header[name] = {"dtype": _NAMES[dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + value.nbytes]}
        offset += value.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as the library does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for value in arrays.values():
            f.write(value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())


def read_checkpoint_weights(directory):
    """All tensors of a Hugging Face checkpoint folder: `model.safetensors`, or the shards
    listed by `model.safetensors.index.json`.

    Raises:
        FileNotFoundError: neither is there (a `pytorch_model.bin` is named as unsupported),
            or a shard the index lists is not.
        SafetensorsError: a shard is malformed or a tensor is missing from its shard.
    """
    index_path = os.path.join(directory, INDEX_FILE)
    single = os.path.join(directory, WEIGHTS_FILE)
    if os.path.exists(single):
        return read_safetensors(single)
    if os.path.exists(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SafetensorsError(f"{index_path}: no valid weight_map ({e}).") from None
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            path = os.path.join(directory, shard)
            if not os.path.exists(path):
                listed = sorted(name for name, file in weight_map.items() if file == shard)
                raise MissingFileError(f"{index_path}: shard {shard} (holding {listed[0]!r} "
                                       f"and {len(listed) - 1} more) does not exist.")
            shard_tensors = read_safetensors(path)
            for name, file in weight_map.items():
                if file == shard:
                    if name not in shard_tensors:
                        raise SafetensorsError(f"{index_path}: tensor {name!r} is listed in "
                                               f"{shard}, which does not hold it.")
                    tensors[name] = shard_tensors[name]
        return tensors
    if os.path.exists(os.path.join(directory, "pytorch_model.bin")):
        raise MissingFileError(
            f"{directory}: only pytorch_model.bin, a pickled torch file that tflm does not read. "
            "Save the model as model.safetensors first (transformers: "
            "model.save_pretrained(dir, safe_serialization=True)).")
    raise MissingFileError(f"{directory}: no {WEIGHTS_FILE} or {INDEX_FILE}.")
