"""A thief's moves on a ticket, each usable on its own: fine-tuning (mask kept, dense then re-pruned,
transfer with a new head), further pruning (global magnitude, random, one layer), add-on, function-
preserving permutation, distillation into a fresh sparse student, and residual block removal."""

from verifier.attacks.addon import add_on
from verifier.attacks.blocks import removable_blocks, remove_block
from verifier.attacks.distillation import distill, fresh_sparse_student
from verifier.attacks.finetune import dense_finetune_reprune, fine_tune, last_linear, transfer
from verifier.attacks.permutation import permute_hidden_units
from verifier.attacks.pruning import prune_further, prune_layer, random_prune

__all__ = ["add_on", "dense_finetune_reprune", "distill", "fine_tune", "fresh_sparse_student", "last_linear",
           "permute_hidden_units", "prune_further", "prune_layer", "random_prune", "remove_block",
           "removable_blocks", "transfer"]
