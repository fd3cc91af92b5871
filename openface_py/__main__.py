"""``python -m openface_py`` runs the command-line interface."""

import sys

from openface_py.cli import main

if __name__ == "__main__":
    sys.exit(main())
