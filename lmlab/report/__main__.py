import sys

from lmlab.report.cli import main

sys.exit(main())
