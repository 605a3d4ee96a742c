"""Demo model packages shipped with inferline: a digits MLP and its distilled fallback.

Made by ``train.py`` (which needs scikit-learn; the package does not). The
default repository is seeded with them on first use.
"""

import os

DEMO_DIR = os.path.dirname(os.path.abspath(__file__))
DEMO_MODELS = ("digits-logreg", "digits-mlp")  # fallback first: the MLP refers to it


def demo_package_path(name: str) -> str:
    return os.path.join(DEMO_DIR, name)
