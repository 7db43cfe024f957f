from scai.cli import main

raise SystemExit(main())
