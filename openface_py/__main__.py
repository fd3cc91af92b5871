"""``python -m openface_py`` runs the command-line interface."""

import sys

try:
    from openface_py.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line loads: one line, not a traceback
    sys.stderr.write("interrupted\n")
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
