"""Synthetic capability tasks, generated on the fly and deterministic per ``torch.Generator``.

State tracking (``parity``, ``modular_arithmetic``, ``cycle_navigation``, ``even_pairs``), group word problems
(``s3``, ``a5``, ``s5``), recall (``mqar``) and memory (``copying``, ``selective_copying``, ``induction_heads``,
``window_parity``).
Variants are config fields: ``make_task("modular_arithmetic", precedence=False)`` (+ and − only, left to right),
``make_task("mqar", read_twice=True)`` (the key–value block shown twice). Each task's docstring gives its paper,
vocabulary layout, lengths, scored positions, chance accuracy and the lengths of its train score
(:meth:`Task.train_score_lengths`).

>>> import torch
>>> from rnnzoo.tasks import make_task
>>> task = make_task("parity")
>>> batch = task.sample(4, 16, torch.Generator().manual_seed(0))
>>> batch.inputs.shape, task.chance
(torch.Size([4, 16]), 0.5)
"""

from .base import Batch, BitTask, PrefixTask, Task, list_tasks, make_task, register_task
from .state_tracking import CycleNavigation, EvenPairs, ModularArithmetic, Parity
from .groups import A5, S3, S5, GroupWordProblem
from .recall import MQAR
from .memory import Copying, InductionHeads, SelectiveCopying, WindowParity

__all__ = [
    "Batch", "Task", "PrefixTask", "BitTask", "list_tasks", "make_task", "register_task",
    "Parity", "ModularArithmetic", "CycleNavigation", "EvenPairs",
    "GroupWordProblem", "S3", "A5", "S5", "MQAR", "Copying", "SelectiveCopying", "InductionHeads", "WindowParity",
]
