import sys

from lmlab.report.write import main

sys.exit(main())
