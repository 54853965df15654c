"""The training stage's runs: the base classifier, then one (method, sigma) fine-tuned."""
