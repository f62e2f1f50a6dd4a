"""Resolving a dataset name: a registered dataset (`digits`, ...) or an owner's uploaded `.npz` (by id)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.artifacts import ArtifactStore
from service.datasets.npz import read_npz
from service.errors import APIError
from service.models import Owner, UploadedDataset, is_id
from verifier.data import Dataset, dataset_names, dataset_spec, load_dataset

UNLIMITED = 1 << 62


@dataclass(frozen=True)
class DatasetRef:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    sha256: str | None = None  # set for uploaded datasets

    @property
    def spec(self) -> tuple[tuple[int, ...], int]:
        return self.input_shape, self.num_classes


def resolve_dataset(session: Session, name: str, *, owner: Owner | None) -> DatasetRef:
    """A registered dataset, or an uploaded one the owner may use (any, when `owner` is None). 422 else."""
    if name in dataset_names():
        shape, classes = dataset_spec(name)
        return DatasetRef(name, shape, classes)
    row = session.get(UploadedDataset, name) if is_id(name) else None
    if row is None or (owner is not None and row.owner_id != owner.id and not owner.is_admin):
        raise APIError(422, "unknown_dataset", f"unknown dataset {name!r}; known: {', '.join(dataset_names())}, "
                       "or the id of a dataset you uploaded (POST /v1/datasets)")
    return DatasetRef(row.id, tuple(row.input_shape), row.num_classes, row.sha256)


def load(store: ArtifactStore, ref: DatasetRef) -> Dataset:
    """The dataset's tensors (uploaded ones are re-validated from the store)."""
    if ref.sha256 is None:
        return load_dataset(ref.name)
    return read_npz(store.path(ref.sha256), name=ref.name, max_bytes=UNLIMITED)
