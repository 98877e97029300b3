"""The subspace bases: DLDR's (the top principal directions of the trajectory's samples, exactly:
float64 Gram matrix and its eigendecomposition), TWA's (the span of the raw samples, by QR), both
in memory or streamed from the sample files; and the random orthonormal basis of the control."""
import numbers

import torch

from .cli import UsageError
from .samples import check_state_matches, load_state


def _sample_shape(samples, name):
    """(n, D) of a 2-D floating-point tensor of samples, else a TypeError/ValueError saying what
    came instead (a 1-D tensor would otherwise fail as "not enough values to unpack")."""
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"{name}: samples must be a torch tensor (n, D), got "
                        f"{type(samples).__name__}")
    if samples.dim() != 2:
        raise ValueError(f"{name}: samples must be a 2-D (n, D) tensor, one flattened sample a "
                         f"row, got shape {tuple(samples.shape)}"
                         + ("; for one sample use samples[None]" if samples.dim() == 1 else ""))
    if not samples.is_floating_point():
        raise TypeError(f"{name}: samples must be floating point, got {samples.dtype}")
    return samples.shape


def _check_components(n, n_components):
    if n_components > n - 1:
        raise UsageError(f"--n_components {n_components}: {n} samples span at most {n - 1} "
                         f"directions; use --n_components <= {n - 1} or more samples")


def _principal_directions(gram, n_components):
    """Top eigenpairs of the float64 Gram matrix of the centred samples, shared by both bases.

    Returns (vecs, scale, ratios): the (n, k) eigenvectors with deterministic signs, 1/sqrt of
    their eigenvalues (row i of the basis is scale[i] * vecs[:, i] @ centred samples) and the
    explained variance ratios.
    """
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    total = evals.clamp_min(0).sum()
    top, vecs = evals[:n_components], evecs[:, :n_components]
    if top[-1] <= total * 1e-14 or total <= 0:
        raise UsageError(f"--n_components {n_components}: the samples span fewer directions "
                         "(they are identical or nearly so); use fewer components")
    # Deterministic signs (PCA directions have none): each direction points from the first sample
    # towards the last, i.e. v[-1] - v[0] >= 0, decided on the n-vectors before the long pass.
    vecs = vecs * torch.where(vecs[-1] - vecs[0] < 0, -1.0, 1.0).to(vecs.dtype)
    return vecs, top.rsqrt(), top / total


def subspace_basis(samples, n_components, block=None):
    """Top principal directions of the centred samples, exactly (float64 Gram eigendecomposition).

    samples: (n, D) tensor. Returns (basis, explained_variance_ratio): basis is (k, D) float64 with
    orthonormal rows, ratios are the fractions of the total variance along each direction, as
    scikit-learn's PCA reports them. Written here rather than taken from scikit-learn because the
    Gram route on the device is several times faster for n << D (BENCHMARKS.md). Columns go
    through in blocks so the float64 working set stays small even for large D;
    ``streaming_subspace_basis`` gives the same basis from files.
    """
    n, dim = _sample_shape(samples, "subspace_basis")
    _check_components(n, n_components)
    # On the CPU, blocks of 4k columns stay in cache from the conversion through the product, and
    # one reused buffer spares the page faults of fresh large allocations.
    block = min(block or (1 << 20 if samples.is_cuda else 1 << 12), dim)
    buffer = torch.empty(n, block, dtype=torch.float64, device=samples.device)

    def centred(lo):  # float64 centred columns lo.., computed again for pass two (cheaper than kept)
        cols = buffer[:, :min(block, dim - lo)]
        cols.copy_(samples[:, lo:lo + block])
        cols -= cols.mean(0)
        return cols

    gram = torch.zeros(n, n, dtype=torch.float64, device=samples.device)
    for lo in range(0, dim, block):
        cols = centred(lo)
        gram.addmm_(cols, cols.T)
    vecs, scale, ratios = _principal_directions(gram, n_components)
    rows = vecs.T * scale[:, None]  # (k, n): basis row i = scale[i] * vecs[:, i] @ centred samples
    basis = torch.empty(n_components, dim, dtype=torch.float64, device=samples.device)
    for lo in range(0, dim, block):
        torch.mm(rows, centred(lo), out=basis[:, lo:lo + block])
    # The Gram route squares the condition number: re-orthonormalise the rows (same span, each row
    # keeps its direction) by Cholesky QR, one small Gram matrix and a triangular solve in place.
    chol = torch.linalg.cholesky(basis @ basis.T)
    torch.linalg.solve_triangular(chol, basis, upper=False, out=basis)
    return basis, ratios


def _read_columns(paths, layout, lo, out):
    """Columns lo..lo+width of the flattened parameters of every sample file, into out (n, width).

    Each file is mapped for this block only: pages read through a mapping count in the resident
    set until it is unmapped, so n files kept mapped would grow it to the size of all samples.
    """
    hi = lo + out.shape[1]
    for i, path in enumerate(paths):
        state = load_state(path, mmap=True)
        for name, offset, size in layout:
            a, b = max(lo, offset), min(hi, offset + size)
            if a < b:
                src = state[name].reshape(-1)[a - offset:b - offset]
                # float64 samples are rounded to float32 first, as load_sample_matrix does
                out[i, a - lo:b - lo].copy_(src.float() if src.dtype == torch.float64 else src)
                del src
        del state  # the last reference to the mapping: munmap


def _centred_chunks(paths, layout, dim, buffer, chunk, centre=True):
    """(first column, float64 columns, centred unless ``centre`` is False) of all samples,
    ``chunk`` columns at a time, read from the files a buffer's width at a time."""
    width = buffer.shape[1]
    for lo in range(0, dim, width):
        block = buffer[:, :min(width, dim - lo)]
        _read_columns(paths, layout, lo, block)
        for c in range(0, block.shape[1], chunk):
            cols = block[:, c:c + chunk].double()
            if centre:
                cols -= cols.mean(0)
            yield lo + c, cols


def _layout(paths, model, arch):
    """Every sample file checked against ``model`` (before the long passes); returns the
    parameters' (name, first column, size) and D."""
    for path in paths:
        check_state_matches(load_state(path, mmap=True), model, path, arch)
    layout, dim = [], 0
    for name, p in model.named_parameters():
        layout.append((name, dim, p.numel()))
        dim += p.numel()
    return layout, dim


def streaming_subspace_basis(paths, model, n_components, *, arch=None, working_bytes=1 << 30,
                             dtype=torch.float32):
    """``subspace_basis`` of sample files without holding the samples in memory.

    paths: sample files (model state dicts as save_sample writes them); model gives the parameter
    names, order and shapes, as for load_sample_matrix. Returns (basis, explained_variance_ratio)
    like subspace_basis: the same Gram matrix, eigenvectors, signs and Cholesky-QR, computed in
    float64, but with the samples read from memory-mapped files one column block at a time (two
    passes over the files: the Gram matrix, then the basis rows). Peak memory is the (k, D) basis
    plus about ``working_bytes`` (a float32 (n, width) read buffer and float64 temporaries),
    whatever the number of samples. The basis is returned as ``dtype``, float32 by default: the
    training uses it in the parameters' float32 anyway, and it halves the largest allocation;
    rows then agree with the float64 basis to float32 rounding.
    """
    arch = arch or type(model).__name__
    n = len(paths)
    _check_components(n, n_components)
    layout, dim = _layout(paths, model, arch)
    # Compute in chunks of `chunk` columns (float64: centred samples, rows, solve output), read in
    # blocks of `width` columns: each file is unpickled once per block, so the blocks are as wide
    # as the budget allows.
    chunk = max(1, min(1 << 16, dim, working_bytes // 8 // (8 * n + 16 * n_components)))
    temporaries = chunk * (8 * n + 16 * n_components)
    # per column: the float32 buffer entry of each sample plus the mapped page of the file in use
    width = max(chunk, min(dim, (working_bytes - temporaries) // (4 * n + 4)))
    buffer = torch.empty(n, width, dtype=torch.float32)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for _, cols in _centred_chunks(paths, layout, dim, buffer, chunk):
        gram += cols @ cols.T
    vecs, scale, ratios = _principal_directions(gram, n_components)
    basis = torch.empty(n_components, dim, dtype=dtype)
    row_gram = torch.zeros(n_components, n_components, dtype=torch.float64)
    for lo, cols in _centred_chunks(paths, layout, dim, buffer, chunk):
        rows = vecs.T @ cols
        rows *= scale[:, None]
        row_gram += rows @ rows.T  # of the float64 rows, as subspace_basis's Cholesky QR
        basis[:, lo:lo + rows.shape[1]] = rows
    del buffer, cols, rows
    chol = torch.linalg.cholesky(row_gram)
    for lo in range(0, dim, chunk):  # the Cholesky-QR correction, in place
        part = basis[:, lo:lo + chunk]
        part.copy_(torch.linalg.solve_triangular(chol, part.double(), upper=False))
    return basis, ratios


def _span_rows(blocks, width, n, dim, out):
    """The span basis into ``out`` (n, D) from ``blocks()``, an iterable of (first column,
    float64 (n, w <= ``width``) columns) of the raw samples W, made twice.

    Pass 1: R of the QR factorisation W^T = Q R, by TSQR (R of [R; block^T], block after block,
    Householder throughout), with diag(R) > 0, so that row i of Q^T spans sample i with the rows
    before it, as Gram-Schmidt orders them. Pass 2: the rows Q^T = R^-T W, block by block. Their
    orthogonality error is about eps * cond(W); one Cholesky-QR pass on their Gram matrix, in
    place, takes it to rounding (cond(Q) is about 1).
    """
    r = None
    for _, cols in blocks():
        stacked = cols.T if r is None else torch.cat([r, cols.T])
        r = torch.linalg.qr(stacked, mode="r")[1][:n]
    r = r * torch.where(r.diagonal() < 0, -1.0, 1.0).to(r.dtype)[:, None]
    diag = r.diagonal().abs()
    if len(diag) < n or diag.min() <= 1e-12 * diag.max():
        raise UsageError(f"the {n} samples span fewer than {n} directions (two of them are equal, "
                         "or one is a combination of the others); use another sample range")
    row_gram = torch.zeros(n, n, dtype=torch.float64, device=out.device)
    for lo, cols in blocks():
        rows = torch.linalg.solve_triangular(r.T, cols, upper=False)
        row_gram += rows @ rows.T
        out[:, lo:lo + rows.shape[1]] = rows
    chol = torch.linalg.cholesky(row_gram)
    for lo in range(0, dim, width):  # the Cholesky-QR correction, in place
        part = out[:, lo:lo + width]
        part.copy_(torch.linalg.solve_triangular(chol, part.double(), upper=False))
    return out


def span_basis(samples, block=None):
    """An orthonormal basis of the span of the raw samples (TWA's subspace, Li et al. ICLR 2023:
    not centred, one direction per sample), as Gram-Schmidt would give it but by Householder QR.

    samples: (n, D) tensor. Returns the (n, D) float64 basis, row i in the span of samples
    0..i and positive on sample i. Columns go through in blocks, as in ``subspace_basis``.
    """
    n, dim = _sample_shape(samples, "span_basis")
    block = min(block or (1 << 20 if samples.is_cuda else 1 << 12), dim)
    blocks = lambda: ((lo, samples[:, lo:lo + block].double())  # noqa: E731
                      for lo in range(0, dim, block))
    out = torch.empty(n, dim, dtype=torch.float64, device=samples.device)
    return _span_rows(blocks, block, n, dim, out)


def streaming_span_basis(paths, model, *, arch=None, working_bytes=1 << 30, dtype=torch.float32):
    """``span_basis`` of sample files without holding the samples in memory: the same
    factorisation, with the samples read from memory-mapped files a column block at a time
    (three passes), peak memory the (n, D) basis plus about ``working_bytes``, the basis returned
    as ``dtype`` (float32 by default, as ``streaming_subspace_basis``)."""
    arch = arch or type(model).__name__
    n = len(paths)
    layout, dim = _layout(paths, model, arch)
    chunk = max(n, min(1 << 16, dim, working_bytes // 8 // (24 * n)))
    width = max(chunk, min(dim, (working_bytes - chunk * 24 * n) // (4 * n + 4)))
    buffer = torch.empty(n, width, dtype=torch.float32)
    blocks = lambda: _centred_chunks(paths, layout, dim, buffer, chunk, centre=False)  # noqa: E731
    return _span_rows(blocks, chunk, n, dim, torch.empty(n, dim, dtype=dtype))


def random_basis(dim, n_components, seed, dtype=torch.float64):
    """An orthonormal (k, D) basis spanning a uniformly random k-dimensional subspace; k =
    ``n_components`` must be in 1..D (ValueError: QR of a D x k matrix gives only D rows)."""
    for name, value in (("dim", dim), ("n_components", n_components)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"random_basis: {name} must be an int >= 1, got {value!r}")
    if n_components > dim:
        raise ValueError(f"random_basis: n_components = {n_components} orthonormal rows need "
                         f"n_components <= dim = {dim}")
    g = torch.Generator().manual_seed(seed)
    gauss = torch.randn(dim, n_components, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(gauss)
    return q.T.contiguous().to(dtype)
