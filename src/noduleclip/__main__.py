from noduleclip.cli import main

raise SystemExit(main())
