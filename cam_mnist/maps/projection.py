"""The first principal component of a layer's cells: what Eigen-CAM, Eigen-Grad-CAM, KPCA-CAM and the
``eigen_smooth`` option draw instead of the sum over channels. In ``keras.ops``, on every backend.

Each image's activations are an (n = h w cells) x K matrix X. Its first component, linear or in a kernel's feature
space, is found from the smaller symmetric matrix ``eigh`` can take (never an SVD of X, which PyTorch and JAX
compute less reliably for rank-deficient matrices than the symmetric eigenproblem)."""

from __future__ import annotations

from keras import ops


def cells(x):
    """(B, h, w, K) -> (B, h w, K), and the (B, h, w) shape to put projections back into."""
    b, h, w, k = ops.shape(x)
    return ops.reshape(x, (b, h * w, k)), (b, h, w)


def top_projection(flat):
    """X v_1 (B, n) for the first right singular vector v_1 of each X (B, n, K), of either sign: from X^T X (K x K),
    or, where there are fewer cells than channels, X X^T (n x n), whose top eigenvector u_1 gives X v_1 = s_1 u_1."""
    n, k = flat.shape[1], flat.shape[2]
    if n is not None and n < k:
        values, vectors = ops.eigh(ops.matmul(flat, ops.transpose(flat, (0, 2, 1))))  # ascending eigenvalues s^2
        return vectors[:, :, -1] * ops.sqrt(ops.maximum(values[:, -1:], 0.0))
    _, vectors = ops.eigh(ops.matmul(ops.transpose(flat, (0, 2, 1)), flat))
    return ops.einsum("bnk,bk->bn", flat, vectors[:, :, -1])


def largest_positive(projection):
    """Each row's sign fixed so that its value of largest magnitude is positive: the sign of a principal component
    is arbitrary, and this is the orientation Seg-Eigen-CAM's eq. (13) and scikit-learn's ``svd_flip`` choose (the
    salient cells, where the map is far from its mean, positive). (B, n)."""
    top = ops.take_along_axis(projection, ops.argmax(ops.abs(projection), axis=1)[:, None], axis=1)
    return projection * ops.where(top < 0, -1.0, 1.0)


def first_component(x):
    """The cells of x (B, h, w, K), centred over the cells, projected on their first principal component: (B, h, w).
    As pytorch-grad-cam's ``get_2d_projection`` (Eigen-Grad-CAM, ``eigen_smooth``), with the sign of
    :func:`largest_positive`."""
    flat, shape = cells(x)
    centred = flat - ops.mean(flat, axis=1, keepdims=True)
    return ops.reshape(largest_positive(top_projection(centred)), shape)


def kernel_component(x, gamma: float | None = None, coef0: float = 1.0):
    """The first kernel principal component (Schoelkopf et al. 1998) of the cells of x (B, h, w, K), centred over
    the cells, with the sigmoid kernel k(a, b) = tanh(gamma a.b + coef0), gamma 1/K by default (scikit-learn's
    ``KernelPCA(n_components=1, kernel="sigmoid")``, which KPCA-CAM uses): the centred kernel matrix's top
    eigenvector times the square root of its eigenvalue, the training points' projections. (B, h, w)."""
    flat, shape = cells(x)
    flat = flat - ops.mean(flat, axis=1, keepdims=True)
    gamma = 1.0 / flat.shape[2] if gamma is None else gamma
    kernel = ops.tanh(gamma * ops.matmul(flat, ops.transpose(flat, (0, 2, 1))) + coef0)  # (B, n, n)
    rows = ops.mean(kernel, axis=2, keepdims=True)  # centring in feature space: K - 1K - K1 + 1K1
    centred = kernel - rows - ops.transpose(rows, (0, 2, 1)) + ops.mean(rows, axis=1, keepdims=True)
    values, vectors = ops.eigh(centred)
    projection = vectors[:, :, -1] * ops.sqrt(ops.maximum(values[:, -1:], 0.0))
    return ops.reshape(largest_positive(projection), shape)
