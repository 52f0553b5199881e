"""`python -m devtools.local` (`make local`, `make local-up`): see devtools/local/run.py."""

import sys

from devtools.local.run import main

sys.exit(main())
