"""What runs inside the trial containers: the agent-editable train.py, the trusted harness, evaluator and data format.

Only `train.py` is the agent's. Everything else in this package is trusted and baked into the trial image.
`trainer.prepare` runs on the host (it needs rustbpe, tiktoken and pyarrow, which the trial image does not carry).
"""
