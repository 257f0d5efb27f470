"""``python -m echo``: the inference command line (see :mod:`echo.cli`)."""
from echo.cli import main

raise SystemExit(main())
