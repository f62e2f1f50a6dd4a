"""A thief's moves on a ticket, each usable on its own: fine-tuning (mask kept, dense then re-pruned,
transfer with a new head), further pruning (global magnitude, random, one layer), add-on, function-
preserving permutation, per-unit rescaling and BatchNorm folding, replacement of the signature
window (fake3), forged key masks (fake1), distillation into a fresh sparse student, and residual
block removal."""

from verifier.attacks.addon import add_on
from verifier.attacks.blocks import removable_blocks, remove_block
from verifier.attacks.distillation import distill, fresh_sparse_student
from verifier.attacks.finetune import dense_finetune_reprune, fine_tune, last_linear, transfer
from verifier.attacks.forged_key import forged_key_accuracies
from verifier.attacks.permutation import permute_checked, permute_hidden_units, reparametrise, reparametrise_checked
from verifier.attacks.pruning import prune_further, prune_layer, random_prune
from verifier.attacks.replacement import replace_window
from verifier.attacks.rescale import fold_batchnorm, rescale_units
from verifier.attacks.streams import permute_residual_streams

__all__ = ["add_on", "dense_finetune_reprune", "distill", "fine_tune", "fold_batchnorm", "forged_key_accuracies",
           "fresh_sparse_student", "last_linear", "permute_checked", "permute_hidden_units",
           "permute_residual_streams", "prune_further", "prune_layer", "random_prune", "remove_block",
           "removable_blocks", "reparametrise", "reparametrise_checked", "replace_window", "rescale_units", "transfer"]
