import sys

from tuwen.apps.cli import main

sys.exit(main())
