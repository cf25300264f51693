import sys

from cam_mnist.commands.main import main

sys.exit(main())
