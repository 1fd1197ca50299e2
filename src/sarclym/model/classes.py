"""The two classes, in the network's order: index 1, lymphoma, is the positive class.

The one definition: predictions, the generator, training and the SR groups all use it.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["CLASSES", "Label"]

#: Class names by index: 0 = sarcoidosis (negative), 1 = lymphoma (positive).
Label = Literal["sarcoidosis", "lymphoma"]
CLASSES: tuple[Label, Label] = ("sarcoidosis", "lymphoma")
