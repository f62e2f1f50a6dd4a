from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel
from sqlalchemy import select

from service.artifact_records import record_artifact
from service.audit.chain import append_event
from service.datasets.npz import read_npz
from service.deps import CurrentOwner, DbSession, SettingsDep, Store
from service.errors import APIError
from service.models import UploadedDataset
from service.visibility import get_visible

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


class DatasetOut(BaseModel):
    id: str
    name: str
    input_shape: list[int]
    num_classes: int
    n_train: int
    n_test: int
    created_at: datetime

    @classmethod
    def of(cls, row: UploadedDataset) -> DatasetOut:
        return cls(**{name: getattr(row, name) for name in cls.model_fields})


@router.post("", status_code=201, response_model=DatasetOut)
def upload_dataset(owner: CurrentOwner, session: DbSession, settings: SettingsDep, store: Store,
                   file: Annotated[UploadFile, File(description="`.npz` with x_train, y_train, x_test, y_test.")],
                   name: Annotated[str, Form(min_length=1, max_length=200)]) -> DatasetOut:
    """Upload a dataset; use its `id` wherever a dataset name is asked for. Visible to you only."""
    if not name.isprintable():
        raise APIError(422, "invalid_name", "name must not contain control characters")
    with store.staged(file.file, max_bytes=settings.max_upload_bytes) as staged:
        data = read_npz(staged.path, name=name, max_bytes=settings.max_upload_bytes)
        record_artifact(session, sha256=store.keep(staged), size=staged.size, kind="dataset")
    row = UploadedDataset(owner_id=owner.id, name=name, sha256=staged.sha256, input_shape=list(data.input_shape),
                          num_classes=data.num_classes, n_train=len(data.x_train), n_test=len(data.x_test))
    session.add(row)
    session.flush()
    append_event(session, actor=owner.name, action="dataset.uploaded", subject=f"dataset:{row.id}",
                 owner_id=owner.id, payload={"name": name, "sha256": staged.sha256,
                                             "input_shape": row.input_shape, "num_classes": row.num_classes})
    session.commit()
    return DatasetOut.of(row)


@router.get("", response_model=list[DatasetOut])
def list_datasets(owner: CurrentOwner, session: DbSession) -> list[DatasetOut]:
    query = select(UploadedDataset).order_by(UploadedDataset.created_at)
    if not owner.is_admin:
        query = query.where(UploadedDataset.owner_id == owner.id)
    return [DatasetOut.of(row) for row in session.execute(query).scalars()]


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, owner: CurrentOwner, session: DbSession) -> DatasetOut:
    return DatasetOut.of(get_visible(session, UploadedDataset, dataset_id, owner=owner, what="dataset"))
