"""False matches at scale (issue 14, finding 8): many honestly found tickets, every test a ticket
without a signature carries, targeted and 1:N, and the null p-values against the uniform.

    python benchmarks/false_positives.py --arch lenet300_100 --independent 300 --same-init 100 \
        --pairs 10000 --searches 300 --cache DIR --plot docs/figures/false_positives_lenet300_100.png

Tickets (digits): `--independent` tickets, ticket i with seed 1000 + i and recipe i of a grid that
crosses the finder (IMP 3 x 50 %, 2 x 60 % or 4 x 40 % with rewinding; one-shot to 15 or 25 %; CTS
to 10 or 20 %), the learning rate (0.02, 0.05, 0.1), the batch size (32, 64, 128) and the epochs
(10, 15, 20; `--epochs` sets others), in an order shuffled with seed 0; and `--same-init` tickets
that share one initialisation (seed 7, one of `verifier.initialisation.KNOWN_SEEDS`, so public) and differ only by
recipe (distinct grid entries): honest parties starting from the same public init. A suspect that
shares the registered ticket's public initialisation has its white-box tests withheld, as in the
service (`verifier.decision`, rule 5); the sign test's false positives are counted over every ordered
pair of independent tickets. Each ticket is cached in DIR (safetensors), so a run resumes.

Targeted: `--pairs` ordered pairs (registered, suspect) of distinct independent tickets, drawn at
random (seed 0; with `--registered K` the registered one among K tickets drawn first). Each is
judged as the service judges a suspect against an unsigned ticket: the topology test (consistent
null, permutation p and tail bound, up to `--permutations`) and the aligned topology test calibrated
on 20 other independent tickets within a factor 2 of the registered one's density (never the
suspect; chosen as the service chooses them) and read at the suspect's density (a suspect beyond
the references' densities is read against up to 10 more tickets of its density, as the service
does, or gets no p; the count without that reading is printed beside it), combined and decided by
`verifier.decision`. The same for every pair of same-init tickets
(up to `--same-init-pairs`). 1:N: `--searches` independent tickets, each searched for among all the
other independent tickets: ranked by weight summary, the nearest 5 tested in full (the aligned test
on the nearest, its p corrected over every ticket it was chosen from), decided over the 5. Prints
the tables (false matches with the 95 % one-sided Clopper-Pearson upper bound) and writes a QQ plot
of the targeted null p-values against the uniform, with a pointwise 95 % band.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import beta

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verifier.aligned import (  # noqa: E402
    DENSITY_MARGIN,
    DensityOutsideReferences,
    aligned_overlap,
    calibrated_p,
    spread_order,
)
from verifier.data import load_dataset  # noqa: E402
from verifier.decision import CandidateTests, SchemeResult, bonferroni, decide, strongest  # noqa: E402
from verifier.initialisation import KNOWN_SEEDS, seeded_signs, suspect_agreement  # noqa: E402
from verifier.masks import overall_density  # noqa: E402
from verifier.models import permutable_axes  # noqa: E402
from verifier.signatures.qr import make_code, make_payload, whitening_key  # noqa: E402
from verifier.signatures.signing import read_signature, sign_ticket, signature_read_mask  # noqa: E402
from verifier.summaries import spectral_summary, summary_distances  # noqa: E402
from verifier.tickets.controls import OneShotConfig, find_oneshot_ticket  # noqa: E402
from verifier.tickets.cts import CtsConfig, find_cts_ticket  # noqa: E402
from verifier.tickets.imp import find_imp_ticket  # noqa: E402
from verifier.tickets.ticket import Ticket, load_ticket, save_ticket  # noqa: E402
from verifier.topology import compare_topology  # noqa: E402
from verifier.training import TrainConfig  # noqa: E402
from verifier.units import layer_groups  # noqa: E402

PRUNINGS = [("imp", {"rounds": 3, "rate": 0.5}), ("imp", {"rounds": 2, "rate": 0.6}),
            ("imp", {"rounds": 4, "rate": 0.4}), ("oneshot", {"target_density": 0.15}),
            ("oneshot", {"target_density": 0.25}), ("cts", {"target_density": 0.1}),
            ("cts", {"target_density": 0.2})]
EPOCHS = (10, 15, 20)
# (pruning index, lr, batch size, epochs index into the run's epochs grid)
RECIPES = list(itertools.product(range(len(PRUNINGS)), (0.02, 0.05, 0.1), (32, 64, 128), range(3)))
np.random.default_rng(0).shuffle(RECIPES)
SAME_INIT_SEED = 7
QR_SECRET = b"benchmark secret"
REFERENCES = 20
MIN_REFERENCES = 10  # the service's default TICKETGUARD_TOPOLOGY_MIN_REFERENCES: how many it adds at a density
SHORTLIST = 5
DENSITY_FACTOR = 2.0


def find(arch: str, data, seed: int, recipe: tuple, epochs_grid: tuple[int, ...] = EPOCHS) -> Ticket:
    """One ticket by recipe (pruning index, lr, batch size, index into `epochs_grid`)."""
    pruning, lr, batch, epoch_index = recipe
    epochs = epochs_grid[epoch_index]
    method, params = PRUNINGS[pruning]
    train = TrainConfig(epochs=epochs, lr=lr, batch_size=batch)
    if method == "imp":
        return find_imp_ticket(arch, data, seed=seed, epochs=epochs, lr=lr, batch_size=batch, **params)
    if method == "oneshot":
        return find_oneshot_ticket(arch, data, seed=seed, config=OneShotConfig(train=train, **params))
    return find_cts_ticket(arch, data, seed=seed, config=CtsConfig(train=train, pretrain=train, **params))


def population(arch: str, count: int, same_init: int, cache: Path, epochs_grid: tuple[int, ...] = EPOCHS,
               shard: tuple[int, int] = (0, 1)) -> tuple[list[Ticket], list[Ticket]]:
    """The independent and the same-init tickets, found or read from `cache`; with `shard` (k, n) only
    every n-th ticket from the k-th is found or read (several processes fill one cache)."""
    cache.mkdir(parents=True, exist_ok=True)
    data = load_dataset("digits")
    started, found = time.monotonic(), 0

    def get(kind: str, index: int, seed: int, recipe: tuple) -> Ticket:
        nonlocal found
        path = cache / f"{arch}-{kind}-{index}.safetensors"
        if not path.exists():
            save_ticket(find(arch, data, seed, recipe, epochs_grid), path)
            found += 1
            if found % 25 == 0:
                print(f"  {found} tickets found in {time.monotonic() - started:.0f} s", file=sys.stderr)
        return load_ticket(path)

    k, n = shard
    independent = [get("independent", i, 1000 + i, RECIPES[i % len(RECIPES)]) for i in range(k, count, n)]
    shared = [get("same-init", j, SAME_INIT_SEED, RECIPES[j % len(RECIPES)]) for j in range(k, same_init, n)]
    return independent, shared


@dataclass
class Judged:
    topology_p: float
    topology_permutation_p: float
    aligned_p: float | None
    aligned_rank_p: float | None
    decision: str
    p_value: float
    shares_init: bool
    aligned_uncalibrated: bool = False  # the suspect's density lies beyond its references': no aligned p


class Judge:
    """The service's white-box tests of an unsigned ticket, on tickets held in memory."""

    def __init__(self, arch: str, tickets: list[Ticket], permutations: int) -> None:
        self.arch, self.tickets, self.permutations = arch, tickets, permutations
        self.groups = layer_groups(arch, tickets[0].state)
        self.permutable = {name: permutable_axes(arch, name) for name in tickets[0].mask}
        self.densities = np.array([overall_density(t.mask) for t in tickets])
        self.kappas: dict[tuple[int, int], float] = {}
        self.seconds = {"topology": 0.0, "aligned": 0.0}
        self.unadjusted_p: list[float] = []  # the aligned p without the density fit, for comparison
        self.added: list[int] = []  # references measured at a suspect's density, per suspect beyond the stored ones
        self.spec = (load_dataset(tickets[0].dataset).input_shape, load_dataset(tickets[0].dataset).num_classes)
        self.signs: dict[int, dict] = {}  # the registered tickets' initial signs, by seed

    def shares_public_init(self, ticket: Ticket, suspect: Ticket) -> bool:
        """As the service reads it: the suspect's nonzero weights against the signs of the registered
        ticket's initialisation (its finder's seed), public when the seed is one anyone would try."""
        if ticket.seed not in self.signs:
            self.signs[ticket.seed] = seeded_signs(self.arch, self.spec, ticket.seed, list(ticket.mask))
        signs = self.signs[ticket.seed]
        shared = suspect_agreement(signs, suspect.state).shared
        return shared and ticket.seed in KNOWN_SEEDS

    def kappa(self, ticket: Ticket, suspect: Ticket, key: tuple[int, int] | None = None) -> float:
        if key is not None and key in self.kappas:
            return self.kappas[key]
        started = time.perf_counter()
        value = aligned_overlap(ticket.state, ticket.mask, suspect.state, suspect.mask, self.permutable).kappa
        self.seconds["aligned"] += time.perf_counter() - started
        if key is not None:
            self.kappas[key] = value
        return value

    def standardized_kappas(self) -> np.ndarray:
        """Every measured kappa, standardized by the mean and sd of its registered ticket's kappas (the
        per-ticket null the aligned test's bound is about), pooled over tickets with 10 or more."""
        by_ticket: dict[int, list[float]] = {}
        for (registered, _), value in self.kappas.items():
            by_ticket.setdefault(registered, []).append(value)
        parts = [(np.array(v) - np.mean(v)) / np.std(v) for v in by_ticket.values() if len(v) >= 10 and np.std(v) > 0]
        return np.concatenate(parts) if parts else np.zeros(1)

    def kinds_table(self) -> list[str]:
        """Markdown rows: the mean kappa (and sd) of every measured pair by the registered ticket's kind
        (finder and target) and the suspect's: how much the aligned null depends on the suspect."""
        kind = [PRUNINGS[RECIPES[i % len(RECIPES)][0]] for i in range(len(self.tickets))]
        names = [f"{method} {','.join(str(v) for v in params.values())}" for method, params in PRUNINGS]
        cells: dict[tuple[int, int], list[float]] = {}
        for (registered, suspect), value in self.kappas.items():
            key = (PRUNINGS.index(kind[registered]), PRUNINGS.index(kind[suspect]))
            cells.setdefault(key, []).append(value)
        rows = ["| registered \\ suspect | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for r, name in enumerate(names):
            row = [f"{np.mean(cells[r, c]):.3f} ± {np.std(cells[r, c]):.3f} ({len(cells[r, c])})"
                   if cells.get((r, c)) else "" for c in range(len(names))]
            rows.append(f"| {name} | " + " | ".join(row) + " |")
        return rows

    def references_at(self, ticket: Ticket, suspect: Ticket, density: float, known: int) -> list[tuple[float, float]]:
        """The service's `references_at_density`: up to MIN_REFERENCES more references within
        DENSITY_MARGIN of the suspect's density (never the suspect, nor the registered ticket's own
        references, which lie outside that band), the densest and sparsest first, then by index."""
        index = {id(t): i for i, t in enumerate(self.tickets)}
        registered, excluded = index[id(ticket)], index[id(suspect)]
        near = [i for i in range(len(self.tickets)) if i not in (registered, excluded)
                and density / DENSITY_MARGIN <= self.densities[i] <= density * DENSITY_MARGIN]
        near = near[:4 * (MIN_REFERENCES + known)]
        chosen = [near[k] for k in spread_order([self.densities[i] for i in near])][:MIN_REFERENCES]
        return [(self.kappa(ticket, self.tickets[i], (registered, i)), float(self.densities[i])) for i in chosen]

    def references(self, registered: int, exclude: set[int]) -> list[tuple[float, float]]:
        """The registered ticket's calibration: (kappa, density) against REFERENCES other tickets within
        a factor 2 of its density (the same ones for every suspect but the suspect itself), chosen as
        the service chooses them (`reference_tickets`): the sparsest and the densest of the first
        4 x REFERENCES eligible, then the first."""
        density = self.densities[registered]
        near = [i for i in range(len(self.tickets)) if i != registered and i not in exclude
                and density / DENSITY_FACTOR <= self.densities[i] <= density * DENSITY_FACTOR][:4 * REFERENCES]
        chosen = [near[k] for k in spread_order([self.densities[i] for i in near])][:REFERENCES]
        return [(self.kappa(self.tickets[registered], self.tickets[i], (registered, i)), float(self.densities[i]))
                for i in chosen]

    def tests(self, ticket: Ticket, suspect: Ticket, seed: int, references: list[tuple[float, float]] | None,
              selection: int = 1) -> CandidateTests:
        started = time.perf_counter()
        topology = compare_topology(ticket.mask, suspect.state, groups=self.groups, permutations=self.permutations,
                                    seed=seed)
        self.seconds["topology"] += time.perf_counter() - started
        withheld = "shares a public initialisation" if self.shares_public_init(ticket, suspect) else None
        tests = CandidateTests([SchemeResult("topology", topology.p_value, topology.to_dict(), withheld=withheld)])
        if references is not None:
            kappa, (values, densities) = self.kappa(ticket, suspect), zip(*references, strict=True)
            self.unadjusted_p.append(calibrated_p(kappa, values).p_value)
            suspect_density = overall_density(suspect.mask)
            try:
                calibration = calibrated_p(kappa, values, densities=densities, suspect_density=suspect_density)
            except DensityOutsideReferences:
                # as the service does: references of the suspect's density, measured there and then
                more = self.references_at(ticket, suspect, suspect_density, len(references))
                self.added.append(len(more))
                try:
                    calibration = calibrated_p(kappa, values + tuple(v for v, _ in more),
                                               densities=densities + tuple(d for _, d in more),
                                               suspect_density=suspect_density)
                except DensityOutsideReferences as exc:
                    tests.add(SchemeResult("aligned_topology", None, {"calibrated": False, "reason": str(exc)}))
                    return tests
            tests.add(SchemeResult("aligned_topology", bonferroni(calibration.p_value, selection),
                                   calibration.to_dict(), withheld=withheld))
        return tests


def init_false_shares(tickets: list[Ticket], spec: tuple) -> tuple[int, int]:
    """Over every ordered pair of independent tickets: how often the suspect is read as sharing the
    registered ticket's initialisation (the sign test's false positives), and the pairs tried."""
    flagged = tried = 0
    for ticket in tickets:
        signs = seeded_signs(ticket.arch, spec, ticket.seed, list(ticket.mask))
        for suspect in tickets:
            if suspect is not ticket:
                flagged += suspect_agreement(signs, suspect.state).shared
                tried += 1
    return flagged, tried


def qr_false_positives(tickets: list[Ticket], count: int, permutations: int) -> tuple[list[Judged], int]:
    """The first `count` tickets signed as the service signs them (a whitened version 3-H code, 2
    recovery epochs), and every other ticket read against each as the service reads a suspect
    (`signature_read_mask`, `read_signature`): the QR module test's null, judged alone. Also how many
    reads took the network alignment."""
    data = load_dataset(tickets[0].dataset)
    rows, network = [], 0
    for index, ticket in enumerate(tickets[:count]):
        code = make_code(make_payload(QR_SECRET, "owner", f"ticket-{index}"))
        key = whitening_key(QR_SECRET, f"ticket-{index}")
        signed = sign_ticket(ticket.arch, data, ticket.state, ticket.mask, ticket.rewind, code, key=key, seed=index)
        for other, suspect in enumerate(tickets):
            if other != index:
                read = read_signature(ticket.arch, code, signed.placement, signed.weights, suspect.state,
                                      signature_read_mask(signed.mask, suspect.state), key=key,
                                      permutations=permutations, seed=other)
                valid = read["decoded"] == code.payload
                tests = CandidateTests([SchemeResult("qr", read["p_value"], read, decisive=valid)])
                decision = decide(tests, compared=1)
                # the QR p in the topology fields: the table and the JSON lines read them alike
                rows.append(Judged(read["p_value"], read["p_value"], None, None, decision.verdict, decision.p_value,
                                   False))
                network += read["alignment"]["by"] == "network"
    return rows, network


def judged(tests: CandidateTests, compared: int = 1) -> Judged:
    topology, aligned = tests.get("topology"), tests.get("aligned_topology")
    decision = decide(tests, compared=compared)
    calibrated = aligned is not None and aligned.p_value is not None
    return Judged(topology.p_value, topology.evidence["p_permutation"], aligned.p_value if calibrated else None,
                  aligned.evidence["p_empirical"] if calibrated else None, decision.verdict, decision.p_value,
                  topology.withheld is not None, aligned_uncalibrated=aligned is not None and not calibrated)


def upper_bound(errors: int, trials: int) -> float:
    """95 % one-sided Clopper-Pearson upper bound on a rate from `errors` in `trials`."""
    return float(beta.ppf(0.95, errors + 1, trials - errors)) if errors < trials else 1.0


def table(title: str, rows: list[Judged]) -> None:
    if not rows:
        return
    matches = sum(r.decision == "match" for r in rows)
    inconclusive = sum(r.decision == "inconclusive" for r in rows)
    p = np.array([r.p_value for r in rows])
    print(f"| {title} | {len(rows)} | {matches} | {upper_bound(matches, len(rows)):.2e} | {inconclusive} | "
          f"{p.min():.3g} | {np.median(p):.3g} |")


def qq_plot(rows: list[Judged], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {"topology, permutation p": [r.topology_permutation_p for r in rows],
              "topology, decision p": [r.topology_p for r in rows],
              "aligned, decision p (moment bound)": [r.aligned_p for r in rows if r.aligned_p is not None],
              "aligned, rank p": [r.aligned_rank_p for r in rows if r.aligned_rank_p is not None]}
    figure, axis = plt.subplots(figsize=(6, 6))
    n = max(len(v) for v in series.values())
    ranks = np.arange(1, n + 1)
    expected = -np.log10(ranks / (n + 1))
    axis.fill_between(expected, -np.log10(beta.ppf(0.975, ranks, n - ranks + 1)),
                      -np.log10(beta.ppf(0.025, ranks, n - ranks + 1)), color="0.85", label="95 % band (uniform)")
    axis.plot(expected, expected, color="0.4", linewidth=0.8)
    for label, values in series.items():
        values = np.sort(np.asarray(values))
        m = len(values)
        axis.plot(-np.log10(np.arange(1, m + 1) / (m + 1)), -np.log10(values), ".", markersize=3, label=label)
    axis.set_xlabel("expected -log10 p (uniform)")
    axis.set_ylabel("observed -log10 p")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="lenet300_100")
    parser.add_argument("--independent", type=int, default=300)
    parser.add_argument("--same-init", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--same-init-pairs", type=int, default=1_000)
    parser.add_argument("--registered", type=int,
                        help="Draw the targeted pairs' registered tickets from this many (random) tickets only "
                             "(default: all). Each registered ticket is calibrated on 20 alignments; on resnet20 "
                             "an alignment takes about 0.7 s, so this bounds the run's cost.")
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--permutations", type=int, default=99_999)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--epochs", type=int, nargs=3, default=EPOCHS, metavar=("SHORT", "MID", "LONG"),
                        help="The grid's three training lengths (default 10 15 20; the conv nets' runs used 4 6 8 "
                             "to fit the machine).")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--find-only", metavar="K/N",
                        help="Only find (and cache) shard K of N of the tickets, then stop: run N such processes "
                             "side by side, then the benchmark itself on the filled cache.")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--same-init-permutations", type=int,
                        help="Permutations for the same-init pairs (default: --permutations). Their white-box "
                             "tests are withheld, so this sets only how low their evidence p can go; a pair the "
                             "bound does not decide draws them all.")
    parser.add_argument("--qr-references", type=int, default=0,
                        help="Also sign this many of the independent tickets with a QR code and read every other "
                             "independent ticket against each (the QR module test's false positives).")
    parser.add_argument("--out", type=Path, help="Write every judged pair as JSON lines here.")
    parser.add_argument("--no-sign-test", action="store_true",
                        help="Skip the sign test's count over every ordered pair (most of a resnet20 run's time).")
    parser.add_argument("--targeted-from", type=Path,
                        help="Take the targeted pairs from an earlier run's --out file instead of judging them "
                             "again (the pairs are drawn the same way, so the same --pairs gives the same pairs).")
    args = parser.parse_args()
    started = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.find_only is not None:
        k, n = (int(v) for v in args.find_only.split("/"))
        population(args.arch, args.independent, args.same_init, args.cache, tuple(args.epochs), (k, n))
        return
    independent, shared = population(args.arch, args.independent, args.same_init, args.cache, tuple(args.epochs))
    densities = [overall_density(t.mask) for t in independent]
    print(f"{args.arch}: {len(independent)} independent tickets (accuracy "
          f"{np.mean([t.accuracy for t in independent]):.3f}, density {min(densities):.1%}-{max(densities):.1%}), "
          f"{len(shared)} same-init tickets; {time.monotonic() - started:.0f} s\n")
    rng = np.random.default_rng(0)
    judge = Judge(args.arch, independent, args.permutations)
    n = len(independent)
    pairs = set()
    registered = None if args.registered is None else rng.choice(n, size=min(args.registered, n), replace=False)
    while len(pairs) < min(args.pairs, (len(registered) if registered is not None else n) * (n - 1)):
        if registered is None:
            r, s = (int(v) for v in rng.integers(0, n, size=2))
        else:  # each registered ticket calibrates once (20 alignments), so fewer of them cost less
            r, s = int(registered[rng.integers(len(registered))]), int(rng.integers(n))
        if r != s:
            pairs.add((r, s))
    targeted = []
    if args.targeted_from is not None:
        rows = [json.loads(line) for line in args.targeted_from.read_text().splitlines()]
        targeted = [Judged(**{k: v for k, v in row.items() if k != "kind"}) for row in rows
                    if row["kind"] == "targeted"]
        pairs = set()
    for index, (r, s) in enumerate(sorted(pairs)):
        tests = judge.tests(independent[r], independent[s], index, judge.references(r, {s}))
        targeted.append(judged(tests))
        if (index + 1) % 1000 == 0:
            print(f"  {index + 1} pairs in {time.monotonic() - started:.0f} s", file=sys.stderr)
    unadjusted = np.array(judge.unadjusted_p)  # the targeted pairs' (the searches add theirs below)

    everyone = independent + shared
    shared_judge = Judge(args.arch, everyone, args.same_init_permutations or args.permutations)
    same_pairs = list(itertools.combinations(range(n, n + len(shared)), 2))
    rng.shuffle(same_pairs)
    others = set(range(n, len(everyone)))  # a same-init ticket is calibrated on independent ones, as registered
    same = [judged(shared_judge.tests(everyone[r], everyone[s], i, shared_judge.references(r, others)))
            for i, (r, s) in enumerate(same_pairs[:args.same_init_pairs])]

    summaries = [spectral_summary(t.state, list(t.mask)) for t in independent]
    layers = len(independent[0].mask)
    searched = []
    for s in rng.choice(n, size=min(args.searches, n), replace=False):
        registry = [i for i in range(n) if i != s]
        distances = summary_distances(summaries[s], np.stack([summaries[i] for i in registry]), layers)
        shortlist = [registry[i] for i in np.argsort(distances, kind="stable")[:SHORTLIST]]
        candidates = [judge.tests(independent[c], independent[s], int(s), judge.references(c, {s}) if k == 0 else None,
                                  selection=len(registry)) for k, c in enumerate(shortlist)]
        searched.append(judged(strongest(candidates), compared=len(shortlist)))

    print("| pairs | n | false matches | 95 % upper bound | inconclusive | min p | median p |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    table("independent, targeted", targeted)
    table(f"independent, 1:N over {n - 1}", searched)
    table(f"same public initialisation (seed {SAME_INIT_SEED}), targeted", same)
    if same:
        print(f"\nsame-init pairs read as sharing the registered ticket's public initialisation: "
              f"{sum(r.shares_init for r in same)} of {len(same)}")
    qr_rows, network = qr_false_positives(independent, args.qr_references, min(args.permutations, 9_999))
    if qr_rows:
        print("\n| pairs | n | false matches | 95 % upper bound | inconclusive | min p | median p |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        table(f"independent, QR module test against {args.qr_references} signed tickets (9,999 permutations)",
              qr_rows)
        print(f"read through the network alignment (the rest through the layer's own): {network} of {len(qr_rows)}")
    if not args.no_sign_test:
        flagged, tried = init_false_shares(independent, judge.spec)
        print(f"independent ordered pairs read as sharing an initialisation: {flagged} of {tried} "
              f"(95 % upper bound {upper_bound(flagged, tried):.2e})")
    if args.out is not None:
        with args.out.open("w") as out:
            for kind, rows in (("targeted", targeted), ("search", searched), ("same_init", same), ("qr", qr_rows)):
                out.writelines(json.dumps({"kind": kind, **asdict(row)}) + "\n" for row in rows)
    if not targeted:
        return
    if args.plot is not None:
        qq_plot(targeted, args.plot, f"{args.arch}: null p-values of {len(targeted)} independent pairs")
        print(f"QQ plot: {args.plot}")
    topology_p = np.array([r.topology_permutation_p for r in targeted])
    print(f"\ntargeted null, topology permutation p: fraction <= 0.01 / 0.05 / 0.2: "
          f"{(topology_p <= 0.01).mean():.4f} / {(topology_p <= 0.05).mean():.4f} / {(topology_p <= 0.2).mean():.4f}")
    aligned = np.array([r.aligned_p for r in targeted if r.aligned_p is not None])
    print(f"targeted null, aligned decision p (read at the suspect's density): min {aligned.min(initial=1):.3g}, "
          f"at or below 0.01 / 0.05: {(aligned <= 0.01).sum()} / {(aligned <= 0.05).sum()} of {len(aligned)}; "
          f"{sum(r.aligned_uncalibrated for r in targeted)} suspects beyond the references' densities (no p); "
          f"{len(judge.added)} suspects read against references measured at their density "
          f"({sum(judge.added)} references)")
    if len(unadjusted):  # the same pairs without the density fit (judged here, not read from an earlier run)
        print(f"  the same without the density fit (every pair): at or below 0.01 / 0.05: "
              f"{(unadjusted <= 0.01).sum()} / {(unadjusted <= 0.05).sum()} of {len(unadjusted)}")
    print("\naligned kappa by kind of ticket (mean ± sd (pairs)), every pair measured:")
    print("\n".join(judge.kinds_table()))
    standardized = judge.standardized_kappas()
    if len(standardized) >= 10:  # else the targeted pairs came from an earlier run, and so did their kappas
        kurtosis = float((standardized ** 4).mean() / standardized.var() ** 2)
        print(f"aligned statistic, each ticket's kappas standardized by its own mean and sd ({len(standardized)} "
              f"values): kurtosis {kurtosis:.2f} (the bound assumes at most 10), largest {standardized.max():.2f} sd")
    print(f"seconds: topology {judge.seconds['topology']:.0f}, aligned {judge.seconds['aligned']:.0f}; "
          f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
