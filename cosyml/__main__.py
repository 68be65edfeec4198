import sys

from cosyml.cli import main

sys.exit(main())
