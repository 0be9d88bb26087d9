from sparsecl.cli import main

raise SystemExit(main())
