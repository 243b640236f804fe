"""``python -m gateway.cli``: the same as ``llm-gateway``."""

import sys

from gateway.cli.main import main

sys.exit(main())
