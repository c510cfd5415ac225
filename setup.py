"""The optional native kernels (weightcli/_native.c); everything else is in pyproject.toml.

``optional=True``: where no C compiler is found the install goes on without them, and
weightcli runs its numpy path (weightcli/native.py says which one a run uses).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "weightcli._native",
            ["weightcli/_native.c"],
            # IEEE arithmetic as numpy does it: no fused multiply-adds, no reassociation.
            # (-fno-trapping-math changes no value: it lets GCC vectorise floor.)
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math"],
            optional=True,
        )
    ]
)
