"""``python -m workers.provision KIND DEST``: build one model's weights directory."""

import sys

from workers.provision.models import main

sys.exit(main())
