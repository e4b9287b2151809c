"""Claims as data, verdicts as output: ``rnnzoo claims`` lists what the papers claim a family of models can do,
``rnnzoo claims run`` trains the runs that test each claim and says REPRODUCED, NOT REPRODUCED or INCONCLUSIVE.

>>> from rnnzoo.claims import get_claims
>>> [c.name for c in get_claims()][:2]
['neg-eig-parity', 'neg-eig-modular']
"""

from .catalogue import CLAIMS, claim_names, get_claims
from .claim import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Arm, Claim, best_of_seeds, measure, verdict
from .rules import METRICS, AllOf, AnyOf, At, Beats, Ranking, Transition
from .run import ClaimResult, evaluate_claim, run_claims

__all__ = [
    "CLAIMS", "claim_names", "get_claims", "Arm", "Claim", "REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE",
    "best_of_seeds", "measure", "verdict", "METRICS", "AllOf", "AnyOf", "At", "Beats", "Ranking", "Transition",
    "ClaimResult", "evaluate_claim", "run_claims",
]  # fmt: skip
