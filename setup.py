"""Apollo: the paper's optimizers and the training code that reproduces its tables."""

from setuptools import find_packages, setup

setup(
    name="apollo-optim",
    version="0.1.0",
    description=(
        "Apollo (adaptive parameter-wise diagonal quasi-Newton) and the baselines of its paper, "
        "with the paper's experiments"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["tests", "tests.*"]),
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "numpy",
        "PyYAML>=6",
        "tqdm",
        "tensorboard",
        "lmdb>=1.4",
        "matplotlib",
        "scikit-learn",
        "sacremoses>=0.1",  # nmt: Moses normalisation, tokenization, detokenization
        "subword-nmt>=0.3.8",  # nmt: joint BPE
        "sacrebleu>=2.0",  # nmt: detokenized BLEU with its signature
        "regex",  # nmt: Unicode classes (already a dependency of sacremoses)
    ],
    extras_require={"dev": ["pytest>=8", "ruff>=0.6"]},
)
