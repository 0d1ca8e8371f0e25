"""`python scripts/compare_runs.py PATH ...` is `python -m recfunnel.compare PATH ...`."""
from recfunnel.compare import main

raise SystemExit(main())
