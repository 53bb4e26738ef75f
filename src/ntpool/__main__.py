import sys

from .cli.launch import run_main

sys.exit(run_main())
