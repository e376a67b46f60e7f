from expert_router.cli import main

raise SystemExit(main())
