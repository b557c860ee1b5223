"""``python -m seqmnist`` is the ``seqmnist`` command."""

import sys

from .cli import main

sys.exit(main())
