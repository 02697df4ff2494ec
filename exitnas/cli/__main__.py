"""``python -m exitnas.cli``: the same as the ``exitnas`` console script."""

import sys

from exitnas.cli.app import main

sys.exit(main())
