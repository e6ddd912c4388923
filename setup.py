"""Apollo: the paper's optimizers (the ``apollo_optim`` package) and, in the checkout, the
training code that reproduces its tables.

The wheel installs one top-level package, ``apollo_optim``, which needs only torch. The task
trees (``engine``, ``classification``, ``language_model``, ``nmt``), ``scripts``, ``benchmarks``
and ``configs`` run from a clone of the repository and are not installed: their dependencies
are the ``train`` extra (``dev`` adds the test tools).
"""

from setuptools import setup

TRAIN = [
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
    "submitit>=1.5,<2",  # --launcher slurm: job arrays, requeue on SLURM's warning signal
]
# the frameworks whose recipes docs/integrations.md shows, so that the tests run them
DOCS_TESTED = ["transformers", "accelerate", "lightning"]

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
    packages=["apollo_optim", "apollo_optim._kernels"],
    install_requires=["torch>=2.4"],
    extras_require={"train": TRAIN, "dev": [*TRAIN, *DOCS_TESTED, "pytest>=8", "ruff>=0.6"]},
)
