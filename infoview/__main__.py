import sys

from infoview.cli import main

sys.exit(main())
