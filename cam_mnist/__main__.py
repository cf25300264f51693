import sys

from cam_mnist.cli import main

sys.exit(main())
