"""Wall time of the `paper` attack preset on resnet20 with CIFAR-shaped synthetic data, on the CPU and
(where there is one) on a GPU, measured in the same run.

    python benchmarks/attack_speed.py                         # small: 2,048 images; runs anywhere
    python benchmarks/attack_speed.py --size 50000            # CIFAR-10 scale

Only `verifier/` is needed (torch, numpy, scipy; segno for the replacement row, which is skipped
without it), so it runs on a bare GPU machine. The ticket: resnet20 at 20 % of its prunable weights
kept (magnitude mask of a fresh initialisation; attack time does not depend on how it was found).
Each row is one attack of the preset applied by `verifier.attacks.suite.run_attack` (training on the
device `TrainConfig(device="auto")` picks) plus the attacked model's test accuracy. The service's
verification of each row (QR and topology tests) runs on the CPU whatever the device and is timed
in `benchmarks/verify_latency.py`, not here. The CPU run is a child process with
CUDA_VISIBLE_DEVICES empty, so both runs see the same code and data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_rows(size: int, seed: int) -> dict:
    """Every row of the paper preset on this process's device; {row: seconds} plus the device."""
    import torch

    from verifier.attacks.suite import ThiefSetup, applicable, preset, run_attack
    from verifier.data import load_synthetic
    from verifier.masks import apply_mask, magnitude_mask
    from verifier.models import build_model, prunable_parameters
    from verifier.training import evaluate, resolve_device

    device = resolve_device("auto")
    data = load_synthetic(shape=(3, 32, 32), classes=10, size=size, test_size=1000, seed=seed)
    torch.manual_seed(seed)
    model = build_model("resnet20", data.input_shape, data.num_classes)
    names = prunable_parameters("resnet20", model)
    mask = magnitude_mask(dict(model.named_parameters()), dict.fromkeys(names, 0.2))
    apply_mask(model, mask)
    placement = None
    try:
        from verifier.signatures.qr import choose_placement, make_code

        placement = choose_placement(mask, make_code("attack speed"))
    except ImportError:  # no segno on this machine: the replacement row is skipped
        pass
    setup = ThiefSetup(arch="resnet20", input_shape=data.input_shape, num_classes=data.num_classes,
                       state={k: v.detach().clone() for k, v in model.state_dict().items()}, mask=mask,
                       x=data.x_train, y=data.y_train, seed=seed, placement=placement)
    rows = {}
    for name, strength in preset("paper"):
        if applicable(setup, name, locked=False) is not None:
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        attacked = run_attack(setup, name, strength)
        tested = build_model("resnet20", data.input_shape, attacked.num_classes).to(device)
        tested.load_state_dict(attacked.state)
        evaluate(tested, data.x_test.to(device), data.y_test)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows[f"{name}@{strength:g}"] = time.perf_counter() - started
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return {"device": name, "torch": torch.__version__, "rows": rows}


def _child(size: int, seed: int, *, cpu: bool) -> dict:
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if cpu else {}))
    out = subprocess.run([sys.executable, __file__, "--child", "--size", str(size), "--seed", str(seed)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="Training images (CIFAR-10: 50000).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_rows(args.size, args.seed)))
        return
    import torch

    runs = [_child(args.size, args.seed, cpu=True)]
    if torch.cuda.is_available():
        runs.append(_child(args.size, args.seed, cpu=False))
    print(f"resnet20, paper preset, {args.size} synthetic 3x32x32 training images, torch {runs[0]['torch']}\n")
    print("| attack | " + " | ".join(f"{r['device']} s" for r in runs) + (" | speed-up |" if len(runs) > 1 else " |"))
    print("|---|" + "---:|" * (len(runs) + (len(runs) > 1)))
    for row in runs[0]["rows"]:
        times = [r["rows"][row] for r in runs]
        ratio = f" {times[0] / times[1]:.1f}x |" if len(times) > 1 else ""
        print(f"| {row} | " + " | ".join(f"{t:.2f}" for t in times) + f" |{ratio}")
    totals = [sum(r["rows"].values()) for r in runs]
    ratio = f" {totals[0] / totals[1]:.1f}x |" if len(totals) > 1 else ""
    print("| **preset** | " + " | ".join(f"**{t:.1f}**" for t in totals) + f" |{ratio}")
    if len(runs) == 1:
        print("\nno CUDA device here: the GPU column needs a machine with one")


if __name__ == "__main__":
    main()
