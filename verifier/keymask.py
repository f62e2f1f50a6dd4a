"""Scheme V1 of the paper, the key mask ("lock"): split a ticket's mask M into a small *key* Ms (the
top-n kept weights by a score) and the *locked* rest Ml = M - Ms. Retrained from the rewind weights
with Ml alone the network should lose accuracy; with Ml | Ms (the ticket's mask) it is whole. The
verification is that accuracy gap; a forged (random) key of the same size should not close it.

Scores, one tensor per prunable layer, shaped like the weight and zero outside the mask:

* ``magnitude``: |w| of the trained weights.
* ``taylor``: |w * g|, g the gradient of the mean cross-entropy over a few seeded batches of the
  training set, the model in eval mode (BatchNorm uses its running statistics, no dropout), on the CPU.
* ``paths`` (the paper's EWP): input-to-output walks over channels along the model's torch.fx graph,
  stepping through each weighted layer to an output channel with probability proportional to the L2
  norm of the surviving kernel; a kernel's score is its hit count (see `path_hits`).
"""

from __future__ import annotations

import copy
import operator
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from verifier.data import Dataset
from verifier.errors import VerifierError
from verifier.masks import Mask, apply_mask, count_kept
from verifier.models import build_model
from verifier.tickets.ticket import Ticket
from verifier.training import TrainConfig, evaluate, train

SCORES = ("magnitude", "taylor", "paths")
Progress = Callable[[float, str], None]


@dataclass
class KeyConfig:
    """Settings of the key mask; every field has a default and a `help` in its metadata."""

    score: Literal["magnitude", "taylor", "paths"] = field(default="magnitude", metadata={
        "help": "How kept weights are ranked for the key: |w|, |w*grad| (taylor) or path hits (EWP)."})
    key_fraction: float = field(default=0.2, metadata={
        "help": "Fraction of the ticket's kept weights that go into the key, in (0, 1); at 0.05 the gap "
                "stayed under 1 point on most seeds (docs/RESULTS.md)."})
    path_samples: int = field(default=2000, metadata={"help": "Paths sampled by the paths score."})
    taylor_batches: int = field(default=4, metadata={"help": "Training batches the taylor score sums over."})
    taylor_batch_size: int = field(default=128, metadata={"help": "Examples per taylor batch."})
    seed: int = field(default=0, metadata={
        "help": "Seed of the taylor batches, the path walks and both retraining runs of the gap check."})
    train: TrainConfig | None = field(default=None, metadata={
        "help": "Retraining settings of the gap check; default: those the ticket was trained with."})

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            try:
                self.train = TrainConfig(**self.train)
            except (TypeError, ValueError) as error:
                raise VerifierError(f"bad key training settings: {error}", code="invalid_key_config") from None
        problems = []
        if self.score not in SCORES:
            problems.append(f"score must be one of {', '.join(SCORES)}, not {self.score!r}")
        if not (isinstance(self.key_fraction, int | float) and 0 < self.key_fraction < 1):
            problems.append(f"key_fraction must lie strictly between 0 and 1, not {self.key_fraction!r}")
        for name, upper in (("path_samples", 10_000_000), ("taylor_batches", 10_000),
                            ("taylor_batch_size", 65_536)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= upper:
                problems.append(f"{name} must be an integer from 1 to {upper}, not {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            problems.append(f"seed must be a non-negative integer, not {self.seed!r}")
        if self.train is not None and not isinstance(self.train, TrainConfig):
            problems.append("train must be a TrainConfig, a dict of its fields, or None")
        if problems:
            raise VerifierError("; ".join(problems), code="invalid_key_config")


@dataclass
class KeyGap:
    """Outcome of the gap check: test accuracies after retraining from the rewind weights."""

    accuracy_without_key: float  # locked mask alone
    accuracy_with_key: float  # locked | key
    gap: float  # with - without
    key_size: int
    locked_size: int
    config: dict  # the KeyConfig used, its train settings resolved


# ---------------------------------------------------------------------------------------------------
# Masks


def _check_mask(mask: Mask, what: str) -> None:
    for name, keep in mask.items():
        if keep.dtype != torch.bool and not bool(((keep == 0) | (keep == 1)).all()):
            raise VerifierError(f"{what} {name!r} holds values other than 0 and 1", code="invalid_mask")


def _same_layers(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    if set(a) != set(b):
        raise VerifierError(f"{what}: the layers differ ({', '.join(sorted(set(a) ^ set(b)))})",
                            code="invalid_mask")
    for name in a:
        if a[name].shape != b[name].shape:
            raise VerifierError(f"{what}: layer {name!r} has shapes {tuple(a[name].shape)} and "
                                f"{tuple(b[name].shape)}", code="invalid_mask")


def _unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> Mask:
    out, start = {}, 0
    for name, tensor in like.items():
        out[name] = flat[start:start + tensor.numel()].view(tensor.shape).clone()
        start += tensor.numel()
    return out


def key_size(mask: Mask, key_fraction: float) -> int:
    """n = round(key_fraction * kept), at least 1 and at most kept - 1."""
    if not 0 < key_fraction < 1:
        raise VerifierError(f"key_fraction must lie strictly between 0 and 1, not {key_fraction!r}",
                            code="invalid_key_config")
    kept = count_kept(mask)
    if kept < 2:
        raise VerifierError(f"a mask with {kept} kept weight(s) cannot be split into key and lock",
                            code="invalid_mask")
    return min(kept - 1, max(1, int(round(key_fraction * kept))))


def split_key(mask: Mask, scores: dict[str, torch.Tensor], key_fraction: float) -> tuple[Mask, Mask]:
    """(locked, key): key = the n = round(key_fraction * kept) kept weights with the highest scores
    across all layers (exactly n; ties go to the earlier layer in `mask` order, then the lower flat
    index); locked = mask - key. Both are boolean masks shaped like `mask`."""
    _same_layers(mask, scores, "mask and scores")
    _check_mask(mask, "mask")
    n = key_size(mask, key_fraction)
    keep = torch.cat([mask[name].detach().cpu().bool().flatten() for name in mask])
    values = torch.cat([scores[name].detach().cpu().to(torch.float64).flatten() for name in mask])
    if not bool(torch.isfinite(values[keep]).all()):
        raise VerifierError("scores of kept weights must be finite", code="invalid_scores")
    kept_positions = keep.nonzero().squeeze(1)
    order = torch.sort(values[kept_positions], descending=True, stable=True).indices[:n]
    key_flat = torch.zeros_like(keep)
    key_flat[kept_positions[order]] = True
    key = _unflatten(key_flat, mask)
    locked = _unflatten(keep & ~key_flat, mask)
    return locked, key


def random_key(locked: Mask, n: int, seed: int) -> Mask:
    """A forged key (the paper's fake1): n positions drawn uniformly without replacement among all
    the weights `locked` prunes, across every layer."""
    _check_mask(locked, "locked mask")
    if seed < 0:
        raise VerifierError(f"seed must be non-negative, not {seed}", code="invalid_key_config")
    pruned = [(~locked[name].detach().cpu().bool()).flatten() for name in locked]
    counts = np.array([int(p.sum()) for p in pruned], dtype=np.int64)
    if not 1 <= n <= int(counts.sum()):
        raise VerifierError(f"a random key needs 1 to {int(counts.sum())} positions, not {n}", code="invalid_mask")
    chosen = np.sort(np.random.default_rng(seed).choice(int(counts.sum()), size=n, replace=False))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    key = {}
    for index, name in enumerate(locked):
        picks = chosen[(chosen >= bounds[index]) & (chosen < bounds[index + 1])] - bounds[index]
        flat = torch.zeros(locked[name].numel(), dtype=torch.bool)
        flat[pruned[index].nonzero().squeeze(1)[torch.from_numpy(picks)]] = True
        key[name] = flat.view(locked[name].shape)
    return key


# ---------------------------------------------------------------------------------------------------
# Scores


def magnitude_scores(weights: dict[str, torch.Tensor], mask: Mask) -> dict[str, torch.Tensor]:
    """|w| on the kept weights, 0 elsewhere (float64, CPU)."""
    return {name: weights[name].detach().cpu().to(torch.float64).abs() * keep.cpu().bool()
            for name, keep in mask.items()}


def taylor_scores(model: nn.Module, mask: Mask, x: torch.Tensor, y: torch.Tensor, *, batches: int = 4,
                  batch_size: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    """|w * g| on the kept weights, 0 elsewhere: g is the gradient of the mean cross-entropy over
    batches * batch_size training examples drawn without replacement by `seed`. Computed on a CPU copy
    of the (masked) model in eval mode, so it is deterministic for a seed; `model` is left untouched."""
    model = copy.deepcopy(model).cpu().eval()
    apply_mask(model, mask)
    count = min(len(x), batches * batch_size)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:count]
    model.zero_grad(set_to_none=True)
    for start in range(0, count, batch_size):
        index = order[start:start + batch_size]
        loss = F.cross_entropy(model(x[index].cpu()), y[index].cpu(), reduction="sum") / count
        loss.backward()
    parameters = dict(model.named_parameters())
    return {name: (parameters[name].detach() * parameters[name].grad).to(torch.float64).abs() * keep.cpu().bool()
            for name, keep in mask.items()}


_CHANNELWISE_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU,
                        nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d,
                        nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_CHANNELWISE_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, torch.tanh,
                          F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, operator.add,
                          operator.iadd, torch.add}
_CHANNELWISE_METHODS = {"relu", "relu_", "add", "add_", "contiguous", "sigmoid", "tanh"}


@dataclass
class _Node:
    kind: str  # input, channel, flatten, weighted, output
    units: int  # size of the tensor's axis 1 (channels or features)
    users: list[int] = field(default_factory=list)
    block: int = 1  # flatten: features per input channel
    param: str | None = None  # weighted: the weight's parameter name
    norms: np.ndarray | None = None  # weighted: (out, in) L2 norms of the surviving kernels
    squares: np.ndarray | None = None  # weighted: norms ** 2, to merge a flattened channel's block


def _flatten_start(node: fx.Node) -> int:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    return int(start)


def _graph(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> list[_Node]:
    """The model's dataflow graph from torch.fx, reduced to what a channel walk needs."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception as error:  # any tracing failure means the same to the caller
        raise VerifierError(f"path scores need a model torch.fx can trace: {error}", code="untraceable_model") from None
    modes = {module: module.training for module in traced.modules()}
    try:
        traced.eval()
        device = next(iter(model.parameters())).device
        with torch.no_grad():
            ShapeProp(traced).propagate(torch.zeros(1, *input_shape, device=device))
    finally:
        for module, mode in modes.items():
            module.training = mode
    parameters = dict(model.named_parameters())
    index: dict[fx.Node, int] = {}
    nodes: list[_Node] = []

    def units_of(node: fx.Node) -> int:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape") or len(meta.shape) < 2:
            raise VerifierError(f"path scores cannot follow node {node.name!r} (no batched tensor output)",
                                code="untraceable_model")
        return int(meta.shape[1])

    for node in traced.graph.nodes:
        if node.op == "placeholder":
            if any(n.kind == "input" for n in nodes):
                raise VerifierError("path scores need a model with one input", code="untraceable_model")
            item = _Node("input", units_of(node))
        elif node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise VerifierError("path scores need a model with one output tensor", code="untraceable_model")
            item = _Node("output", 0)
        elif node.op == "call_module" and isinstance(traced.get_submodule(node.target), nn.Conv2d | nn.Linear):
            module = traced.get_submodule(node.target)
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise VerifierError(f"path scores do not support grouped convolutions ({node.target})",
                                    code="untraceable_model")
            param = f"{node.target}.weight"
            weight = parameters[param].detach()
            if param in mask:
                weight = weight * mask[param].to(weight.device, torch.bool)
            squares = weight.pow(2).flatten(2).sum(2) if weight.dim() == 4 else weight.pow(2)
            squares = squares.cpu().to(torch.float64)
            item = _Node("weighted", units_of(node), param=param, norms=squares.sqrt().numpy(),
                         squares=squares.numpy())
        elif node.op == "call_module" and isinstance(traced.get_submodule(node.target), _CHANNELWISE_MODULES):
            item = _Node("channel", units_of(node))
        elif node.op == "call_module" and isinstance(traced.get_submodule(node.target), nn.Flatten):
            module = traced.get_submodule(node.target)
            if module.start_dim != 1 or module.end_dim != -1:
                raise VerifierError(f"path scores need flatten from axis 1 ({node.target})", code="untraceable_model")
            item = _Node("flatten", units_of(node))
        elif (node.op == "call_function" and node.target is torch.flatten) or (
                node.op == "call_method" and node.target == "flatten"):
            if _flatten_start(node) != 1:
                raise VerifierError(f"path scores need flatten from axis 1 ({node.name})", code="untraceable_model")
            item = _Node("flatten", units_of(node))
        elif (node.op == "call_function" and node.target in _CHANNELWISE_FUNCTIONS) or (
                node.op == "call_method" and node.target in _CHANNELWISE_METHODS):
            item = _Node("channel", units_of(node))
        else:
            what = (type(traced.get_submodule(node.target)).__name__ if node.op == "call_module"
                    else getattr(node.target, "__name__", str(node.target)))
            raise VerifierError(f"path scores cannot follow {node.op} {what!r} ({node.name})",
                                code="untraceable_model")
        index[node] = len(nodes)
        nodes.append(item)
        for source in node.all_input_nodes:
            producer = nodes[index[source]]
            if index[node] not in producer.users:
                producer.users.append(index[node])
            if item.kind == "weighted" and item.norms.shape[1] != producer.units:
                raise VerifierError(f"{item.param} takes {item.norms.shape[1]} inputs, its input has "
                                    f"{producer.units}", code="untraceable_model")
            if item.kind == "flatten":
                item.block = max(1, item.units // max(1, producer.units))
            if item.kind == "channel" and producer.units != item.units:
                raise VerifierError(f"{node.name} changes the channel count", code="untraceable_model")
    return nodes


def _reach(nodes: list[_Node], live: list[np.ndarray], user: int, source: int) -> np.ndarray:
    """Per unit of `source`: can a walk there go on through `user` to the output?"""
    node = nodes[user]
    if node.kind == "output":
        return np.ones(nodes[source].units, dtype=bool)
    if node.kind == "channel":
        return live[user]
    if node.kind == "flatten":
        return live[user].reshape(nodes[source].units, node.block).any(1)
    return (node.norms[live[user]] > 0).any(0)


def path_hits(model: nn.Module, mask: Mask, input_shape: tuple[int, ...], *, samples: int = 2000,
              seed: int = 0) -> dict[str, torch.Tensor]:
    """Per masked layer, how many of `samples` sampled input-to-output paths crossed each kept weight's
    kernel (int64, shaped like the weight, 0 on pruned weights).

    The walk follows the model's torch.fx graph over channels (features for linear layers):

    * start: the first weighted layer's kernel (input unit -> output unit) is drawn with probability
      proportional to its surviving L2 norm;
    * each later weighted layer (conv or linear; also the unmasked ones, e.g. a stem conv, which get
      no hits) steps from the current channel c to output j with probability proportional to the L2
      norm of the surviving kernel W[j, c] (masked weights);
    * channel-wise ops (BatchNorm, activations, pooling, dropout, the residual add) keep the channel;
    * a flatten maps channel c to its block of H*W features: the next linear layer's kernel from c to
      j is the block W[j, c*H*W:(c+1)*H*W] (a flatten straight after the input keeps the start rule:
      one input feature);
    * branch rule: where a tensor feeds several consumers (a block input feeding conv1 and the
      shortcut, identity or projection), the walk picks one uniformly among the consumers from which
      the output can still be reached; an identity shortcut carries the channel to the add.

    Walks only enter states from which the output is reachable (computed backwards over the graph
    once), so every sampled path is complete. Deterministic for a seed; `model` is left as it was."""
    if samples < 1:
        raise VerifierError("samples must be at least 1", code="invalid_key_config")
    _check_mask(mask, "mask")
    nodes = _graph(model, mask, tuple(input_shape))
    missing = set(mask) - {n.param for n in nodes if n.kind == "weighted"}
    if missing:
        raise VerifierError(f"masked layers the walk never meets: {', '.join(sorted(missing))}",
                            code="invalid_mask")
    live: list[np.ndarray] = [np.zeros(n.units, dtype=bool) for n in nodes]
    reach: dict[tuple[int, int], np.ndarray] = {}
    for position in range(len(nodes) - 1, -1, -1):  # users come after their inputs in fx order
        for user in nodes[position].users:
            reach[user, position] = _reach(nodes, live, user, position)
            live[position] |= reach[user, position]
    hits = {n.param: np.zeros(n.norms.shape, dtype=np.int64) for n in nodes if n.param in mask}
    cumulative: dict[tuple[int, int, int, bool], np.ndarray] = {}

    def distribution(user: int, low: int, high: int, first: bool) -> np.ndarray:
        """Cumulative weights of the next draw at weighted node `user` from units low:high: over input
        units (the start's kernel draw) or over live output units (a step)."""
        key = (user, low, high, first)
        if key not in cumulative:
            node = nodes[user]
            if first:
                weights = node.norms[live[user], low:high].sum(0)
            elif high == low + 1:
                weights = node.norms[:, low] * live[user]
            else:
                weights = np.sqrt(node.squares[:, low:high].sum(1)) * live[user]
            cumulative[key] = np.cumsum(weights)
        return cumulative[key]

    def draw(weights: np.ndarray) -> int:
        return min(int(np.searchsorted(weights, rng.random() * weights[-1], side="right")), len(weights) - 1)

    rng = random.Random(seed)
    start = next(i for i, n in enumerate(nodes) if n.kind == "input")
    for _ in range(samples if live[start].any() else 0):
        position, low, high, first = start, 0, nodes[start].units, True
        while nodes[position].kind != "output":
            users = nodes[position].users
            if len(users) > 1:  # a branch: the state is live, so some user can go on
                single = high == low + 1
                users = [u for u in users
                         if (reach[u, position][low] if single else reach[u, position][low:high].any())]
            user = users[int(rng.random() * len(users))] if len(users) > 1 else users[0]
            node = nodes[user]
            if node.kind == "flatten":
                low, high = low * node.block, high * node.block
            elif node.kind == "weighted":
                if first:
                    low += draw(distribution(user, low, high, True))
                    high, first = low + 1, False
                target = draw(distribution(user, low, high, False))
                if node.param in hits:
                    hits[node.param][target, low:high] += 1
                low, high = target, target + 1
            position = user
    out = {}
    for name, keep in mask.items():
        count = torch.from_numpy(hits[name])
        if keep.dim() == 4:
            count = count[:, :, None, None]
        out[name] = count.expand(keep.shape) * keep.cpu().bool()
    return out


def path_scores(model: nn.Module, mask: Mask, input_shape: tuple[int, ...], *, samples: int = 2000,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """EWP scores: each kept weight gets its kernel's hit count from `path_hits` plus a tie-break
    below 1/2 that grows with |w| (|w| / (2 max |w|) over all kept weights), so weights of equally
    hit kernels rank by magnitude; 0 on pruned weights (float64)."""
    hits = path_hits(model, mask, input_shape, samples=samples, seed=seed)
    parameters = dict(model.named_parameters())
    magnitude = magnitude_scores({name: parameters[name] for name in mask}, mask)
    largest = max((float(m.max()) for m in magnitude.values() if m.numel()), default=0.0)
    scale = 0.5 / largest if largest > 0 else 0.0
    return {name: (hits[name].to(torch.float64) + magnitude[name] * scale) * mask[name].cpu().bool()
            for name in mask}


# ---------------------------------------------------------------------------------------------------
# The ticket


def _ticket_model(ticket: Ticket, dataset: Dataset, state: dict[str, torch.Tensor]) -> nn.Module:
    if dataset.name != ticket.dataset:
        raise VerifierError(f"the ticket was found on {ticket.dataset!r}, not {dataset.name!r}",
                            code="dataset_mismatch")
    model = build_model(ticket.arch, dataset.input_shape, dataset.num_classes)
    model.load_state_dict(state)
    return model


def key_scores(ticket: Ticket, dataset: Dataset, config: KeyConfig | None = None) -> dict[str, torch.Tensor]:
    """The configured score of every kept weight of the ticket's trained weights (`ticket.state`)."""
    config = config or KeyConfig()
    if config.score == "magnitude":
        return magnitude_scores(ticket.state, ticket.mask)
    model = _ticket_model(ticket, dataset, ticket.state)
    if config.score == "taylor":
        return taylor_scores(model, ticket.mask, dataset.x_train, dataset.y_train, batches=config.taylor_batches,
                             batch_size=config.taylor_batch_size, seed=config.seed)
    return path_scores(model, ticket.mask, dataset.input_shape, samples=config.path_samples, seed=config.seed)


def lock_ticket(ticket: Ticket, dataset: Dataset, config: KeyConfig | None = None) -> tuple[Mask, Mask]:
    """(locked, key) of the ticket's mask under `config` (score and key_fraction)."""
    config = config or KeyConfig()
    return split_key(ticket.mask, key_scores(ticket, dataset, config), config.key_fraction)


def _train_config(ticket: Ticket, config: KeyConfig, overrides: dict) -> TrainConfig:
    base = config.train or TrainConfig(**ticket.hyperparameters.get("train", {}))
    try:
        return TrainConfig(**{**asdict(base), **overrides})
    except (TypeError, ValueError) as error:
        raise VerifierError(f"bad training settings: {error}", code="invalid_key_config") from None


def retrain_accuracy(ticket: Ticket, dataset: Dataset, mask: Mask, *, seed: int, config: TrainConfig,
                     progress: Callable[[int, float], None] | None = None) -> float:
    """Test accuracy after training from the ticket's rewind weights with `mask` fixed."""
    _same_layers(ticket.mask, mask, "ticket mask and mask")
    model = _ticket_model(ticket, dataset, ticket.rewind)
    train(model, dataset.x_train, dataset.y_train, config=config, seed=seed,
          mask={name: keep.bool() for name, keep in mask.items()}, progress=progress)
    return evaluate(model, dataset.x_test, dataset.y_test)


def key_gap(ticket: Ticket, dataset: Dataset, locked: Mask, key: Mask, config: KeyConfig | None = None, *,
            progress: Progress | None = None, **overrides) -> KeyGap:
    """Retrain from the rewind weights with `locked` alone and with `locked | key`, same seed
    (`config.seed`) and training settings, and compare test accuracies. `key` may be the genuine key
    (then locked | key is the ticket's mask) or a forgery such as `random_key`. `overrides` set
    TrainConfig fields (epochs=2); `progress(fraction, message)` runs after every epoch."""
    config = config or KeyConfig()
    settings = _train_config(ticket, config, overrides)
    _same_layers(locked, key, "locked and key")
    _check_mask(locked, "locked mask")
    _check_mask(key, "key")
    if any(bool((locked[n].bool() & key[n].bool()).any()) for n in locked):
        raise VerifierError("the key overlaps the locked mask", code="invalid_mask")
    report = progress or (lambda _f, _m: None)
    accuracies = []
    for run, (label, mask) in enumerate((("without key", locked),
                                         ("with key", {n: locked[n].bool() | key[n].bool() for n in locked}))):
        def on_epoch(epoch: int, loss: float, run: int = run, label: str = label) -> None:
            report((run + (epoch + 1) / max(1, settings.epochs)) / 2,
                   f"{label}: epoch {epoch + 1}/{settings.epochs}, loss {loss:.4f}")

        accuracies.append(retrain_accuracy(ticket, dataset, mask, seed=config.seed, config=settings,
                                           progress=on_epoch))
    without, with_key = accuracies
    return KeyGap(accuracy_without_key=without, accuracy_with_key=with_key, gap=with_key - without,
                  key_size=count_kept(key), locked_size=count_kept(locked),
                  config={**asdict(config), "train": asdict(settings)})
