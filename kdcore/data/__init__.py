"""Datasets: reading them from files, and what training does with them in memory.

- :mod:`kdcore.data.readers`: :func:`load_dataset`, from ``.npz`` files and image folders
  (archives or directories). Uploads are untrusted, so this is the data side's attack
  surface (decompression budget, member names, links, image decoding), kept apart from the
  rest so that it can be reviewed as one piece.
- :mod:`kdcore.data.dataset`: :class:`Dataset` in memory, its stratified split, index
  :func:`batches` and :func:`augment`.
- :mod:`kdcore.data.views`: :class:`ViewPolicy` (augmentation as parameters drawn, then
  applied) and :class:`ViewBank`, the fixed views the teacher cache stores outputs for.
- :mod:`kdcore.data.normalizer`: :class:`Normalizer`, the input preprocessing shared by
  training, evaluation and exported students.
"""

from kdcore.data.dataset import DataError, Dataset, augment, batches
from kdcore.data.normalizer import Normalizer, normalize
from kdcore.data.readers import load_dataset
from kdcore.data.views import VIEW_PARAMS, ViewBank, ViewPolicy

__all__ = [
    "VIEW_PARAMS",
    "DataError",
    "Dataset",
    "Normalizer",
    "ViewBank",
    "ViewPolicy",
    "augment",
    "batches",
    "load_dataset",
    "normalize",
]
