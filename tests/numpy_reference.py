"""Independent numpy re-implementations of the table's optimizers.

Written from the formulas (Keras' Adagrad and Adam, McMahan et al.'s
FTRL-proximal), in float32 with the same operation order as a straightforward
implementation, to check the C++ core step by step.
"""

import numpy as np

F = np.float32


def sum_duplicates(keys, grads):
    """Distinct keys in order of first occurrence and their summed gradients."""
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    summed = np.zeros((len(unique), grads.shape[1]), F)
    np.add.at(summed, rank[inverse.ravel()], grads)
    return unique[order], summed


class Reference:
    """Rows of one table under one optimizer, kept in dicts of numpy arrays."""

    def __init__(self, optimizer, dim, **params):
        self.optimizer, self.dim, self.params = optimizer, dim, params
        self.weights, self.state = {}, {}

    def init_row(self, key, value):
        self.weights[key] = np.array(value, F)
        dim = self.dim
        p = self.params
        if self.optimizer == "sgd":
            self.state[key] = np.zeros(0, F)
        elif self.optimizer == "adagrad":
            self.state[key] = np.full(dim, p.get("initial_accumulator", 0.1), F)
        elif self.optimizer == "adam":
            self.state[key] = np.zeros(2 * dim + 1, F)
        elif self.optimizer == "ftrl":
            self.state[key] = np.concatenate(
                [np.zeros(dim, F), np.full(dim, p.get("initial_accumulator", 0.1), F)])

    def apply(self, keys, grads, lr):
        lr = F(lr)
        for key, g in zip(*sum_duplicates(np.asarray(keys), np.asarray(grads, F))):
            w, s = self.weights[key], self.state[key]
            getattr(self, "_" + self.optimizer)(w, s, g, lr)

    def _sgd(self, w, s, g, lr):
        w -= lr * g

    def _adagrad(self, w, acc, g, lr):
        eps = F(self.params.get("epsilon", 1e-7))
        acc += g * g
        w -= lr * g / (np.sqrt(acc) + eps)

    def _adam(self, w, s, g, lr):
        d = self.dim
        b1, b2 = F(self.params.get("beta1", 0.9)), F(self.params.get("beta2", 0.999))
        eps = F(self.params.get("epsilon", 1e-7))
        m, v = s[:d], s[d:2 * d]
        s[2 * d] += F(1)
        t = float(s[2 * d])
        alpha = F(float(lr) * np.sqrt(1.0 - float(b2) ** t) / (1.0 - float(b1) ** t))
        m += (g - m) * (F(1) - b1)
        v += (g * g - v) * (F(1) - b2)
        w -= alpha * m / (np.sqrt(v) + eps)

    def _ftrl(self, w, s, g, lr):
        d = self.dim
        beta, l1, l2 = (F(self.params.get(k, 0.0)) for k in ("beta", "l1", "l2"))
        z, n = s[:d], s[d:]
        n_new = n + g * g
        sigma = (np.sqrt(n_new) - np.sqrt(n)) / lr
        z += g - sigma * w
        n[:] = n_new
        shrink = z - np.sign(z) * l1
        w[:] = np.where(np.abs(z) <= l1, F(0), -shrink / ((beta + np.sqrt(n_new)) / lr + l2))


def make_spec_text(name, params):
    """Spec string for the core, e.g. ``adam(beta1=0.8)``."""
    if not params:
        return name
    return name + "(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")"
