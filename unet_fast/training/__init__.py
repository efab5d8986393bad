"""Training with the paper's recipe: border weight map, elastic deformation, weighted loss.

One module per concern: :mod:`.weight_map`, :mod:`.elastic`, :mod:`.loss`, :mod:`.data`
(folders and overlap-tile crops), :mod:`.trainer` (the loop and :func:`train`),
:mod:`.checkpoint`, :mod:`.metrics`, :mod:`.synthetic` (a data set for tests and the demo).
"""

from __future__ import annotations

from .elastic import augment, random_displacement, warp
from .loss import center_crop, weighted_cross_entropy
from .trainer import Trainer, TrainSettings, evaluate, predict_mask, train
from .weight_map import class_weight_map, weight_map

__all__ = [
    "TrainSettings",
    "Trainer",
    "augment",
    "center_crop",
    "class_weight_map",
    "evaluate",
    "predict_mask",
    "random_displacement",
    "train",
    "warp",
    "weight_map",
    "weighted_cross_entropy",
]
