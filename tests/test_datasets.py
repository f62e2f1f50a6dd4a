"""Owner-uploaded .npz datasets: validation, isolation, and use in finding and registration."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest

from tests.helpers import assert_json_error


def _npz(**overrides) -> bytes:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.random((120, 1, 6, 6), dtype=np.float32), "y_train": rng.integers(0, 3, 120),
              "x_test": rng.random((30, 1, 6, 6), dtype=np.float32), "y_test": rng.integers(0, 3, 30)}
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _upload(client, account, content: bytes, name: str = "shapes"):
    return client.post("/v1/datasets", headers=account.headers, data={"name": name},
                       files={"file": ("d.npz", content, "application/octet-stream")})


def test_upload_list_get_and_isolation(client, alice, bob):
    response = _upload(client, alice, _npz(x_train=(np.random.default_rng(1).random((120, 6, 6)) * 255)
                                           .astype(np.uint8)))
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["input_shape"] == [1, 6, 6] and dataset["num_classes"] == 3
    assert (dataset["n_train"], dataset["n_test"]) == (120, 30)
    assert [d["id"] for d in client.get("/v1/datasets", headers=alice.headers).json()] == [dataset["id"]]
    assert client.get("/v1/datasets", headers=bob.headers).json() == []
    assert_json_error(client.get(f"/v1/datasets/{dataset['id']}", headers=bob.headers), 404)
    found = client.post("/v1/tickets/find", headers=bob.headers,
                        json={"arch": "lenet300_100", "dataset": dataset["id"]})
    assert_json_error(found, 422, "unknown_dataset")


@pytest.mark.parametrize("content,needle", [
    (b"not a zip", "not an .npz"),
    (_npz(y_test=None), "missing ['y_test']"),
    (_npz(extra=np.zeros(3)), "unexpected ['extra']"),
    (_npz(x_train=np.zeros((120, 1, 6, 6), dtype=np.int32)), "floating point or uint8"),
    (_npz(y_train=np.zeros(119, dtype=np.int64)), "shape (120,)"),
    (_npz(y_train=np.full(120, -1)), "negative"),
    (_npz(y_train=np.zeros(120, dtype=np.int64), y_test=np.zeros(30, dtype=np.int64)), "2 to 1000 classes"),
    (_npz(x_test=np.full((30, 1, 6, 6), np.nan, dtype=np.float32)), "NaN"),
    (_npz(x_test=np.zeros((30, 1, 5, 5), dtype=np.float32)), "x_test"),
    (_npz(y_train=np.array([{"a": 1}] * 120, dtype=object)), "allow_pickle=False"),
], ids=["not-zip", "missing", "extra", "int-inputs", "label-count", "negative", "one-class", "nan", "shapes",
        "object-array"])
def test_bad_datasets_are_refused_with_the_reason(client, alice, content, needle):
    error = assert_json_error(_upload(client, alice, content), 422, "invalid_dataset")
    assert needle in error["message"]


def test_pickled_object_arrays_are_never_loaded(client, alice, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            archive.writestr(f"{key}.npy", pickle.dumps(Evil()))
    assert_json_error(_upload(client, alice, buffer.getvalue()), 422, "invalid_dataset")
    assert not marker.exists()


def test_find_and_register_on_an_uploaded_dataset(client, alice):
    dataset = _upload(client, alice, _npz()).json()
    found = client.post("/v1/tickets/find", headers=alice.headers, json={
        "arch": "lenet300_100", "dataset": dataset["id"],
        "hyperparameters": {"rounds": 1, "rate": 0.5, "train": {"epochs": 1}}})
    assert found.status_code == 202, found.text
    job = client.get(f"/v1/jobs/{found.json()['job_id']}", headers=alice.headers).json()
    assert job["status"] == "succeeded", job
    assert job["result"]["dataset"] == dataset["id"]
    registered = client.post("/v1/tickets", headers=alice.headers, data={"name": "t", "from_job": job["id"]})
    ticket = client.get(f"/v1/tickets/{registered.json()['id']}", headers=alice.headers).json()
    assert ticket["status"] == "registered" and ticket["dataset"] == dataset["id"]
    model = client.get(f"/v1/tickets/{ticket['id']}/model", headers=alice.headers).content
    verification = client.post("/v1/verifications", headers=alice.headers,
                               files={"model": ("m", model)}).json()
    result = client.get(f"/v1/verifications/{verification['id']}", headers=alice.headers).json()
    assert result["verdict"] == "match" and result["ticket_id"] == ticket["id"]
