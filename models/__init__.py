"""Recommenders in pure PyTorch + NumPy; nothing here knows about Kafka.

Importing the package registers every model kind (see `models.base.REGISTRY`).
"""

from models import baselines, cfgan, hstu, multvae, sasrec  # noqa: F401  (import = register)
from models.base import REGISTRY, FitReport, Recommender, pick_device

__all__ = ["REGISTRY", "FitReport", "Recommender", "pick_device"]
