import sys

from segrt.cli import main

sys.exit(main())
