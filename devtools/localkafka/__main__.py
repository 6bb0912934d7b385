"""``python -m devtools.localkafka {start,stop,status,wipe,classpath}``."""

import sys

from devtools.localkafka import main

sys.exit(main())
