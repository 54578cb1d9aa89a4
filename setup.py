"""Installs tflm: transformer language models for TensorFlow 2 / Keras 3."""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _version():
    for line in (HERE / "tflm" / "version.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("tflm/version.py has no __version__")


# One TF release line. These pins install together (pip check is clean).
INSTALL_REQUIRES = [
    "tensorflow>=2.20,<2.21",
    "tensorflow-text>=2.20,<2.21",
    "keras>=3.15,<4",
    "keras-hub>=0.32,<0.33",
    "tf-models-official>=2.20,<2.21",
    "absl-py>=1.4",
    "sentencepiece>=0.2",  # SentencePiece vocabulary training
    "tokenizers>=0.20",  # WordPiece and byte-level BPE vocabulary training
    "tensorflow-serving-api>=2.20,<2.21",  # warmup requests and the gRPC client
    "sacrebleu>=2.3",  # BLEU and chrF of generated text (tflm.training.text_metrics)
    "numpy>=1.26",
    "pyyaml>=6.0",
]

EXTRAS_REQUIRE = {
    # safetensors: an independent reader/writer to check tflm's own against;
    # nbclient + ipykernel: the example notebooks run top to bottom as tests;
    # rouge-score: Google's ROUGE, to check tflm's own ROUGE against.
    "test": ["pytest>=8", "pytest-xdist>=3.5", "safetensors>=0.4", "nbclient>=0.10",
             "nbformat>=5.9", "ipykernel>=6.29", "rouge-score>=0.1.2"],
    # The plain tensorflow wheel carries no CUDA libraries and silently runs on CPU without them.
    "gpu": ["tensorflow[and-cuda]>=2.20,<2.21"],
}

setuptools.setup(
    name="tflm",
    version=_version(),
    description="Pretrain, fine-tune and serve transformer language models with TensorFlow 2 and Keras 3.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=setuptools.find_packages(include=["tflm", "tflm.*"]),
    package_data={"tflm": ["resources/*.txt", "resources/*.md", "export/serving_ops_*.txt"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "tflm-train=tflm.cli.train:run",
            "tflm-eval=tflm.cli.eval:run",
            "tflm-vocab=tflm.cli.vocab:run",
            "tflm-prepare=tflm.cli.prepare:run",
            "tflm-export=tflm.cli.export:run",
            "tflm-generate=tflm.cli.generate:run",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Framework :: TensorFlow",
        "License :: OSI Approved :: Apache Software License",
    ],
)
