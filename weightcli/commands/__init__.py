"""One module per command family: a frozen, validated request type, a picklable
``run(request, subject) -> Result`` and the result type it returns.

- ``inspect``: list tensors with statistics.
- ``transform``: ``scale``, ``clip``, ``quantize``, ``apply`` (steps through the pipeline).
- ``by_activation``: ``scale --by-activation`` (factors measured by running the model).
- ``diff``: compare two checkpoints (or two directories of them, pair by pair).
- ``verify``: static, reference and framework checks.

``run`` takes one model (``diff``: a pair) and raises ``WeightcliError`` for what the
user must fix; batch use, printing and exit codes belong to the caller (the CLI's
dispatcher, or a script using ``weightcli.api``).
"""
