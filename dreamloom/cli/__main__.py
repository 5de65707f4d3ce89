import sys

from dreamloom.cli import main

sys.exit(main())
