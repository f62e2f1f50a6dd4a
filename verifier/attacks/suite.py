"""The attack suite as data: every attack with its family, unit of strength, presets and what it
needs, and one entry point that applies an attack at a strength to a ticket (`run_attack`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from verifier.attacks.addon import add_on
from verifier.attacks.blocks import removable_blocks, remove_block
from verifier.attacks.distillation import distill, fresh_sparse_student
from verifier.attacks.finetune import dense_finetune_reprune, fine_tune, last_linear, transfer
from verifier.attacks.permutation import reparametrise_checked
from verifier.attacks.pruning import prune_further, prune_layer, random_prune
from verifier.attacks.replacement import replace_window
from verifier.errors import VerifierError
from verifier.masks import Mask, densities, random_mask
from verifier.models import build_model, permutable_axes
from verifier.signatures.qr import Placement
from verifier.training import evaluate

PERMUTABLE = ("lenet300_100", "conv4", "resnet20", "resnet18", "resnet50")


@dataclass(frozen=True)
class AttackSpec:
    """One attack: its family (one plot each), the unit its strength is counted in, the strengths of
    the `full` and `paper` presets (empty: not in that preset), what the ticket must carry for the
    attack to apply (`signature`, `lock`, `residual_blocks`, `permutable`), and whether its strength
    counts training epochs (capped by the request's budget)."""

    name: str
    family: str
    unit: str
    full: tuple[float, ...]
    paper: tuple[float, ...] = ()
    needs: str | None = None
    epochs: bool = False
    description: str = ""
    bounds: tuple[float, float] = (0.0, 1.0)  # the strengths allowed, inclusive
    integer: bool = False

    def check(self, strength: float) -> float:
        """`strength` if this attack accepts it; VerifierError (code invalid_attack) naming the range."""
        low, high = self.bounds
        ok = isinstance(strength, int | float) and not isinstance(strength, bool) and low <= strength <= high
        if ok and self.integer and float(strength) != int(strength):
            ok = False
        if not ok:
            kind = "a whole number" if self.integer else "a number"
            raise VerifierError(f"{self.name}: strength must be {kind} from {low:g} to {high:g} ({self.unit}), "
                                f"not {strength!r}", code="invalid_attack")
        return float(strength)


EPOCHS, SHARE = (1.0, 200.0), (0.0, 0.99)

ATTACKS: dict[str, AttackSpec] = {spec.name: spec for spec in (
    AttackSpec("fine_tune", "fine-tuning", "epochs", (1, 5, 20), (5,), epochs=True, bounds=EPOCHS, integer=True,
               description="retrain on the thief's data with the mask kept"),
    AttackSpec("dense_fine_tune", "fine-tuning", "epochs", (1, 5), epochs=True, bounds=EPOCHS, integer=True,
               description="drop the mask, retrain every weight, re-prune to the ticket's density by magnitude"),
    AttackSpec("transfer", "fine-tuning", "epochs", (5,), epochs=True, bounds=EPOCHS, integer=True,
               description="retrain with a new head on another task of the same input shape"),
    AttackSpec("prune_magnitude", "pruning", "share of kept weights", (0.05, 0.1, 0.2, 0.3, 0.5),
               (0.05, 0.1, 0.2, 0.5), bounds=SHARE,
               description="prune a further share of the kept weights by global magnitude"),
    AttackSpec("prune_random", "pruning", "share of kept weights", (0.05, 0.1, 0.2), (0.05,), bounds=SHARE,
               description="prune a further share of each layer's kept weights at random"),
    AttackSpec("prune_layer", "pruning", "share of the layer's kept weights", (0.1, 0.3, 0.5), bounds=SHARE,
               description="prune the signature layer only (the largest hidden layer of an unsigned ticket)"),
    AttackSpec("permutation", "permutation", "share pruned before reparametrising", (0.0, 0.1), needs="permutable",
               bounds=SHARE,
               description="prune, then permute every block's hidden channels and, in ResNets, the residual "
                           "streams, rescale every hidden unit by its own factor in [1/100, 100] and fold "
                           "every BatchNorm into its conv (outputs unchanged, asserted)"),
    AttackSpec("add_on", "add-on", "share of pruned weights", (0.005, 0.01, 0.02, 0.05), (0.005, 0.01, 0.02, 0.05),
               bounds=(0.0, 1.0), description="revive a share of the pruned weights with small random values "
                                              "(paper: fake2)"),
    AttackSpec("replacement", "replacement", "recovery epochs", (0, 2), (0,), needs="signature", epochs=True,
               bounds=(0.0, 200.0), integer=True,
               description="overwrite the signature window with a forged code, then retrain (paper: fake3)"),
    AttackSpec("forged_key", "forgery", "forged keys tried", (1, 3), (1,), needs="lock", bounds=(1.0, 20.0),
               integer=True,
               description="claim the published locked ticket with random keys of the key's size (paper: fake1)"),
    AttackSpec("distillation", "distillation", "epochs", (5, 20), epochs=True, bounds=EPOCHS, integer=True,
               description="distil the ticket's answers into a fresh student with its own mask at the same "
                           "layer densities"),
    AttackSpec("block_removal", "block removal", "residual blocks removed", (1, 2), needs="residual_blocks",
               bounds=(1.0, 64.0), integer=True,
               description="remove the residual blocks whose loss costs least, then fine-tune 1 epoch"),
)}

PRESETS = ("paper", "full")


def preset(name: str) -> list[tuple[str, float]]:
    """(attack, strength) pairs of a preset, in table order."""
    if name not in PRESETS:
        raise VerifierError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}", code="invalid_attack")
    return [(spec.name, s) for spec in ATTACKS.values() for s in getattr(spec, name)]


@dataclass
class ThiefSetup:
    """What the attacks start from: the ticket (architecture, weights, mask), the thief's data, and
    where the ticket's signature sits (None when unsigned). `transfer_x/_y/_classes` is the other task
    of the transfer attack; `lr` is the thief's fine-tuning learning rate."""

    arch: str
    input_shape: tuple[int, ...]
    num_classes: int
    state: dict[str, torch.Tensor]
    mask: Mask
    x: torch.Tensor
    y: torch.Tensor
    seed: int = 0
    lr: float = 0.01
    placement: Placement | None = None
    qr_version: int = 3
    qr_error: str = "H"
    transfer_x: torch.Tensor | None = None
    transfer_y: torch.Tensor | None = None
    transfer_classes: int = 2

    def model(self, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
        model = build_model(self.arch, self.input_shape, self.num_classes)
        model.load_state_dict(state if state is not None else self.state)
        return model


@dataclass(frozen=True)
class Attacked:
    """An attacked model's weights, its class count (another after `transfer`) and what to know of it."""

    state: dict[str, torch.Tensor]
    num_classes: int
    note: str = ""


def applicable(setup: ThiefSetup, name: str, *, locked: bool) -> str | None:
    """Why attack `name` does not apply to this ticket (None when it does)."""
    needs = ATTACKS[name].needs
    if needs == "signature" and setup.placement is None:
        return "the ticket carries no QR signature"
    if needs == "lock" and not locked:
        return "the ticket has no key mask (POST /v1/tickets/{id}/lock)"
    if needs == "permutable" and setup.arch not in PERMUTABLE:
        return f"no function-preserving permutation is implemented for {setup.arch}"
    if needs == "residual_blocks" and not removable_blocks(setup.model()):
        return f"{setup.arch} has no residual block with an identity shortcut"
    return None


def _target_layer(setup: ThiefSetup) -> str:
    """The signature layer, or for an unsigned ticket its largest layer with both axes hidden."""
    if setup.placement is not None:
        return setup.placement.layer
    hidden = [n for n in setup.mask if all(permutable_axes(setup.arch, n))] or list(setup.mask)
    return max(hidden, key=lambda n: setup.mask[n].numel())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def run_attack(setup: ThiefSetup, name: str, strength: float) -> Attacked:
    """Apply attack `name` at `strength` (in its spec's unit) to a copy of the ticket. Deterministic
    for a setup's seed on the CPU. `forged_key` is not a model transformation: see
    `verifier.attacks.forged_key`."""
    if name not in ATTACKS or name == "forged_key":
        raise VerifierError(f"run_attack does not apply {name!r}", code="invalid_attack")
    mask = copy.deepcopy(setup.mask)
    model = setup.model()
    seed, epochs = setup.seed, int(strength)
    if name == "fine_tune":
        fine_tune(model, mask, setup.x, setup.y, epochs=epochs, lr=setup.lr, seed=seed)
    elif name == "dense_fine_tune":
        dense_finetune_reprune(model, mask, setup.x, setup.y, epochs=epochs, lr=setup.lr, seed=seed)
    elif name == "transfer":
        if setup.transfer_x is None:
            raise VerifierError("the transfer attack needs another task's data", code="invalid_attack")
        transfer(model, mask, setup.transfer_x, setup.transfer_y, setup.transfer_classes, epochs=epochs,
                 lr=setup.lr, seed=seed)
        return Attacked(_state(model), setup.transfer_classes,
                        f"new {setup.transfer_classes}-class head ({last_linear(model)}); tested on the shared layers")
    elif name == "prune_magnitude":
        prune_further(model, mask, strength)
    elif name == "prune_random":
        random_prune(model, mask, strength, seed=seed)
    elif name == "prune_layer":
        layer = _target_layer(setup)
        prune_layer(model, mask, layer, strength)
        return Attacked(_state(model), setup.num_classes, f"layer {layer}")
    elif name == "permutation":  # pruning commutes with a permutation; a rescaled layer would prune other weights
        if strength:
            prune_further(model, mask, strength)
        edited = reparametrise_checked(setup.arch, _state(model), setup.input_shape, setup.num_classes, seed)
        return Attacked(edited, setup.num_classes, "channels permuted, every unit rescaled by a factor in "
                                                   "[1/100, 100], BatchNorms folded: outputs checked unchanged")
    elif name == "add_on":
        add_on(model, mask, strength, seed=seed)
    elif name == "replacement":
        return _replacement(setup, epochs)
    elif name == "distillation":
        return _distillation(setup, epochs)
    elif name == "block_removal":
        return _block_removal(setup, int(strength))
    return Attacked(_state(model), setup.num_classes)


def _replacement(setup: ThiefSetup, epochs: int) -> Attacked:
    with torch.random.fork_rng():
        torch.manual_seed(setup.seed)
        fill = build_model(setup.arch, setup.input_shape, setup.num_classes).state_dict()
    state, mask = replace_window(setup.state, setup.mask, setup.placement, version=setup.qr_version,
                                 error=setup.qr_error, fill=fill)
    model = setup.model(state)
    if epochs:
        fine_tune(model, mask, setup.x, setup.y, epochs=epochs, lr=setup.lr, seed=setup.seed)
    return Attacked(_state(model), setup.num_classes, f"forged code over the window in {setup.placement.layer} "
                                                      "(location known to the thief: the worst case)")


def _distillation(setup: ThiefSetup, epochs: int) -> Attacked:
    shapes = {name: keep.shape for name, keep in setup.mask.items()}
    own = random_mask(shapes, densities(setup.mask), seed=setup.seed)
    student = fresh_sparse_student(setup.arch, setup.input_shape, setup.num_classes, own, seed=setup.seed)
    distill(setup.model(), student, own, setup.x, epochs=epochs, seed=setup.seed)
    return Attacked(_state(student), setup.num_classes, "student's own random mask at the ticket's layer densities; "
                                                        "unlabelled thief data, temperature 4")


def _block_removal(setup: ThiefSetup, count: int) -> Attacked:
    """Remove `count` blocks greedily, each time the one whose removal costs least accuracy on the
    thief's data, then fine-tune one epoch with the mask kept."""
    model = setup.model()
    removed: list[str] = []
    probe_x, probe_y = setup.x[:1024], setup.y[:1024]
    for _ in range(count):
        candidates = [b for b in removable_blocks(model) if b not in removed]
        if not candidates:
            break
        scores = []
        for block in candidates:
            trial = copy.deepcopy(model)
            remove_block(trial, block)
            scores.append((evaluate(trial, probe_x, probe_y), block))
        best = max(scores)[1]
        remove_block(model, best)
        removed.append(best)
    frozen = [p for block in removed for n, p in model.get_submodule(block).named_parameters() if n.startswith("bn")]
    for parameter in frozen:  # a zero BatchNorm without gradient stays zero: the blocks stay removed
        parameter.requires_grad_(False)
    fine_tune(model, copy.deepcopy(setup.mask), setup.x, setup.y, epochs=1, lr=setup.lr, seed=setup.seed)
    return Attacked(_state(model), setup.num_classes, f"removed {', '.join(removed)}")
