"""``python -m pipeline.cli`` is the ``unoise`` command too."""

from pipeline.cli import main

raise SystemExit(main())
