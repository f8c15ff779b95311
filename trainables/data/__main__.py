"""``python -m trainables.data download NAME``: fetch a dataset that torchvision can download."""

import sys

from trainables.data.datasets import main

sys.exit(main())
