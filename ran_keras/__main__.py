import sys

from ran_keras.cli import main

sys.exit(main())
