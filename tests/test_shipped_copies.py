"""Copies as thieves ship them, through the API, on every architecture with a function-preserving
permutation (issue 14, findings 1-3): wrapper key names, an all-ones declared mask, half precision
(float16, bfloat16), and every channel permuted with every unit rescaled by a factor in [1/100, 100]
and BatchNorms folded. Each is a `match` of the ticket it was copied from, targeted and in a 1:N
search."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from service.config import Settings
from tests.conftest import PRIVATE_SEED
from tests.helpers import register_ok, verify_ok
from tests.verifier.test_reparametrisation import _ticket
from verifier.attacks import reparametrise_checked

REFERENCES = 6  # earlier independent tickets: enough for the aligned test's calibration (set below)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, executor="inline",
                    secret_key="test-secret", max_upload_bytes=4 * 1024 * 1024, verify_permutations=19_999,
                    topology_references=REFERENCES, topology_min_references=REFERENCES)


def _torch_file(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _shipped(arch: str, ticket: dict[str, torch.Tensor], prunable: list[str]) -> dict[str, bytes]:
    """The ticket's weights as a thief might ship them, one file per way."""
    prune_form = {}
    for name, tensor in ticket.items():
        if name in prunable:
            stem = name.removesuffix(".weight")
            prune_form[f"{stem}.weight_orig"], prune_form[f"{stem}.weight_mask"] = tensor, torch.ones_like(tensor)
        else:
            prune_form[name] = tensor
    return {
        "module. keys": _torch_file({f"module.{name}": tensor for name, tensor in ticket.items()}),
        "all-ones declared mask": _torch_file(prune_form),
        "float16": save({name: tensor.half().contiguous() for name, tensor in ticket.items()}),
        "bfloat16": save({name: tensor.bfloat16().contiguous() for name, tensor in ticket.items()}),
        "permuted, rescaled 1/100-100, BN folded": save(
            {k: v.contiguous() for k, v in reparametrise_checked(arch, ticket, (1, 8, 8), 10, seed=11).items()}),
    }


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("arch", ["lenet300_100", "conv4", "resnet20"])
def test_copies_as_thieves_ship_them_match_targeted_and_in_a_search(client, alice, bob, arch):
    for seed in range(REFERENCES):  # the registry's earlier, independent tickets
        state, _ = _ticket(arch, 100 + seed)
        register_ok(client, bob.headers, save({k: v.contiguous() for k, v in state.items()}), arch=arch,
                    name=f"independent {seed}")
    ticket_state, prunable = _ticket(arch, PRIVATE_SEED)  # a seed nobody else starts from
    ticket = register_ok(client, alice.headers, save({k: v.contiguous() for k, v in ticket_state.items()}),
                         arch=arch)
    for way, content in _shipped(arch, ticket_state, prunable).items():
        targeted = verify_ok(client, alice.headers, content, ticket_id=ticket["id"])
        searched = verify_ok(client, bob.headers, content)
        assert targeted["verdict"] == "match", (way, targeted["evidence"])
        assert searched["verdict"] == "match" and searched["ticket_id"] == ticket["id"], (way, searched["evidence"])
