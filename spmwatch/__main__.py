import sys

from spmwatch.cli import main

sys.exit(main())
