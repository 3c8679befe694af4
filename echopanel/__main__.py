from echopanel.cli import main

raise SystemExit(main())
