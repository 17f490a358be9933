"""Variable Shared Meta Learning (Kirsch and Schmidhuber, NeurIPS 2021) in PyTorch.

The library behind VSML Lab: the learner (`vsml.model`), meta-optimisers
(`vsml.es`, `vsml.backprop`), data (`vsml.data`), meta-test evaluation
(`vsml.evaluation`) and the training loop (`vsml.training`). It imports nothing
from the service and reports metrics through callbacks instead of logging.
"""

__version__ = "0.1.0"
