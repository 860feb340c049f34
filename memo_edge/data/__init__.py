"""Data: image sources, datasets by spec string, and class-incremental scenarios.

Imports numpy and PIL only; torchvision and scikit-learn are imported lazily by the loaders that need
them, so device-side code can use sources and scenarios without pulling in the training stack.
"""

from __future__ import annotations

from memo_edge.data.datasets import (
    DATASETS,
    VALID_SPECS,
    Dataset,
    DatasetKind,
    dataset_dirs,
    load_dataset,
    parse_dataset_spec,
)
from memo_edge.data.scenario import (
    Scenario,
    build_scenario,
    make_class_order,
    ordered_class_names,
    parse_scenario,
    remap,
    task_subset,
)
from memo_edge.data.sources import (
    ArraySource,
    ConcatSource,
    FolderSource,
    ImageSource,
    concat_sources,
    image_file_size,
    warn_resized,
)

__all__ = [
    "ArraySource",
    "ConcatSource",
    "DATASETS",
    "Dataset",
    "DatasetKind",
    "FolderSource",
    "ImageSource",
    "Scenario",
    "VALID_SPECS",
    "build_scenario",
    "concat_sources",
    "dataset_dirs",
    "image_file_size",
    "load_dataset",
    "make_class_order",
    "ordered_class_names",
    "parse_dataset_spec",
    "parse_scenario",
    "remap",
    "task_subset",
    "warn_resized",
]
