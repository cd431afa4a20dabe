"""`python -m imgproxy` is the `imgproxy` command."""

import sys

from imgproxy.cli import main

sys.exit(main())
