"""`python -m tokenlife`: the same as the `tokenlife` console script."""

import sys

from tokenlife.cli import main

sys.exit(main())
