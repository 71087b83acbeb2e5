"""`python -m diffusion_trainer --config /etc/dtj/config.yaml` (under torchrun in each pod)."""

import sys

from diffusion_trainer.cli import main

sys.exit(main())
