import sys

from creditq.cli import main

sys.exit(main())
