"""`python -m relssl ...` runs the `relssl` command."""

import sys

from relssl.cli import main

sys.exit(main())
