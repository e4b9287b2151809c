"""``python -m rnnzoo``: the ``rnnzoo`` command, as ``torchrun --nproc_per_node N -m rnnzoo train …`` runs it in
each of its processes."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
