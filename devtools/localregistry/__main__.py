"""``python -m devtools.localregistry {start,stop,status,fetch}``."""

import sys

from devtools.localregistry import main

sys.exit(main())
