"""``python -m data COMMAND ...``; see :mod:`data.cli`."""

from data.cli import main

raise SystemExit(main())
