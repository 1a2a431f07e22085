"""``python -m rrdpo_core``: see :mod:`rrdpo_core.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
