"""Spec strings that configure a table's initializer and optimizer.

A spec is ``name`` or ``name(key=value, ...)``, e.g. ``"adam(beta1=0.9)"``.
The C++ core parses and validates it; these helpers only build the text, so
the same string travels through op attributes, checkpoints and configs.

Initializers: zeros, ones, constant(value), uniform(minval, maxval),
normal(mean, stddev), truncated_normal(mean, stddev).
Optimizers: sgd, adagrad(initial_accumulator, epsilon),
adam(beta1, beta2, epsilon), ftrl(initial_accumulator, beta, l1, l2).
"""


def make_spec(name, **params):
    """Returns the spec string for component ``name`` with float ``params``.

    ``make_spec("adagrad", initial_accumulator=0.1)`` gives
    ``"adagrad(initial_accumulator=0.1)"``; parameters are sorted so equal
    configurations give equal strings.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"spec name must be an identifier, got {name!r}")
    if not params:
        return name
    items = ", ".join(f"{key}={float(value)!r}" for key, value in sorted(params.items()))
    return f"{name}({items})"
