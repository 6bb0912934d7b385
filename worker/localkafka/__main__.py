"""``python -m worker.localkafka {start,stop,status,wipe,classpath}``."""

import sys

from worker.localkafka import main

sys.exit(main())
