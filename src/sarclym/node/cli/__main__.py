"""``python -m sarclym.node.cli``."""

import sys

from sarclym.node.cli.main import main

sys.exit(main())
