"""``python -m rsc_async``: the ``rsc-async`` command line."""

from ._cli import main

raise SystemExit(main())
