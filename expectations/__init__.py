"""Great Expectations: the file context (suites, checkpoints in git) and the validation runner."""
