from mlwitness.cli import main

raise SystemExit(main())
