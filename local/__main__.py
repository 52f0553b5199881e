"""`python -m local`: run the pipeline locally (see local/pipeline.py)."""

import sys

from local.pipeline import main

sys.exit(main())
