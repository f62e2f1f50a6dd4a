"""Shared fixtures: a fresh migrated database per test on SQLite and on PostgreSQL, apps, owners, models."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.db import session_factory
from service.owners.service import create_owner
from tests.helpers import migrated_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database brought to head with Alembic: a SQLite file, or a fresh PostgreSQL database."""
    with migrated_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, executor="inline",
                    secret_key="test-secret", max_upload_bytes=4 * 1024 * 1024,
                    # a permutation p goes no lower than 1/(1 + permutations) (issue 14, finding 6), and the
                    # QR module test has no tail bound: 19,999 lets it reach the match threshold after the
                    # corrections, at a fifth of the default's cost
                    verify_permutations=19_999)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@dataclass
class Account:
    id: str
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_account(settings: Settings, name: str, *, admin: bool = False) -> Account:
    with session_factory(settings.resolved_database_url)() as session:
        owner, key = create_owner(session, secret=settings.secret(), name=name, is_admin=admin, actor="test")
    return Account(owner.id, owner.name, key)


@pytest.fixture
def alice(settings: Settings) -> Account:
    return make_account(settings, "alice")


@pytest.fixture
def bob(settings: Settings) -> Account:
    return make_account(settings, "bob")


@pytest.fixture
def admin(settings: Settings) -> Account:
    return make_account(settings, "root", admin=True)


@dataclass(frozen=True)
class ModelFiles:
    """Tickets on digits made once per test session: the original, a stolen copy, an independent one."""

    ticket: Path
    stolen: Path
    independent: Path
    dense: Path
    prune_form: Path


# the fixture tickets start from a seed nobody else would pick (the finder draws one at random by
# default): a seed in `verifier.initialisation.KNOWN_SEEDS` makes a ticket's initialisation public, and
# a copy that shares it is then `inconclusive` on white-box evidence (issue 14, finding 4)
PRIVATE_SEED = 20_261_207


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return make_model_files(tmp_path_factory.mktemp("models"))


def make_model_files(root: Path) -> ModelFiles:
    """The digits tickets of `model_files`, written into `root` (also used by benchmarks/load.py)."""
    import copy

    import torch

    from verifier.attacks import fine_tune, prune_further
    from verifier.checkpoint import save_state_dict
    from verifier.data import load_dataset
    from verifier.models import build_model
    from verifier.tickets import find_imp_ticket

    root.mkdir(parents=True, exist_ok=True)
    data = load_dataset("digits")
    ticket = find_imp_ticket("lenet300_100", data, seed=PRIVATE_SEED, rounds=2, rate=0.5, epochs=6)
    independent = find_imp_ticket("lenet300_100", data, seed=PRIVATE_SEED + 1, rounds=2, rate=0.5, epochs=6)
    thief = build_model("lenet300_100", data.input_shape, data.num_classes)
    thief.load_state_dict(ticket.state)
    mask = copy.deepcopy(ticket.mask)
    fine_tune(thief, mask, data.x_train, data.y_train, epochs=2, lr=0.01, seed=7)
    prune_further(thief, mask, 0.10)
    dense = build_model("lenet300_100", data.input_shape, data.num_classes)
    files = ModelFiles(root / "ticket.safetensors", root / "stolen.safetensors",
                       root / "independent.safetensors", root / "dense.safetensors", root / "ticket.pt")
    save_state_dict(ticket.state, files.ticket)
    save_state_dict(thief.state_dict(), files.stolen)
    save_state_dict(independent.state, files.independent)
    save_state_dict(dense.state_dict(), files.dense)
    prune_form = {k: v for k, v in ticket.state.items() if k not in ticket.mask}
    for name, keep in ticket.mask.items():
        stem = name.removesuffix(".weight")
        prune_form[f"{stem}.weight_orig"] = ticket.state[name].clone()
        prune_form[f"{stem}.weight_mask"] = keep.float()
    torch.save(prune_form, files.prune_form)
    return files
