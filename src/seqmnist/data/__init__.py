"""Data, the first layer: datasets (datasets.py: the registry and the Dataset; catalogue.py: the
ones seqmnist knows; idx.py: the IDX format; sources.py and download.py: where files are found,
fetched and checked), views (views.py: how an image becomes a sequence) and user images
(images.py: safe decoding, MNIST-style preparation)."""

from . import catalogue  # noqa: F401 (registers the datasets seqmnist knows)
from .datasets import (  # noqa: F401 (the package's public names)
    DATASETS,
    Dataset,
    DatasetSpec,
    check_split,
    get_spec,
    list_datasets,
    load_dataset,
    register_dataset,
)
from .idx import parse_idx, read_idx  # noqa: F401
from .sources import cache_dir, fetch, locate, search_dirs, verify  # noqa: F401
