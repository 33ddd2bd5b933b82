"""Code that runs INSIDE a learner's kernel or the warm parent, sent there as source text.

The harness never imports these modules: `probe_reader` sends `probe.py` into each kernel,
`pool` starts `zygote.py` as the warm parent's script, and `kernel_view` mounts
`masked_init.py` as the `__init__.py` of the grader's hidden packages. They are modules so
that they are linted and shipped with the package.
"""
