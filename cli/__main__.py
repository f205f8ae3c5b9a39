"""`python -m cli`: the `lambdaflow` command, for processes started without the console script."""

from cli.main import main

main()
