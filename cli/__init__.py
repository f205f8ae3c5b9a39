"""The composition root: the `lambdaflow` command and `lambdaflow up`, which wire settings into every layer.

It sits outside the kernel (`lambdaflow/`) so that the kernel imports nothing above it.
"""
