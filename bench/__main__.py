"""`python -m bench [--quick]`: see bench/__init__.py."""

from bench.main import main

raise SystemExit(main())
