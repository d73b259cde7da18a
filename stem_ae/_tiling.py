"""Frames, tiles and Dask: running a block function over a series or a large image.

Nothing here knows what the block function does: :mod:`stem_ae.denoising` hands it
``block(frame, origin) -> (denoised, spread)`` (a picklable callable, for ``dask.distributed``),
where ``origin`` is the global (y, x) of the frame's pixel (0, 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

TILE = 2048
"""Tile side (px) for tiled processing of large images (before the overlap margins)."""


ProgressCallback = Callable[[int, int], None]
BlockFunction = Callable[[np.ndarray, tuple[int, int]], tuple[np.ndarray, np.ndarray | None]]


def run_frames(image, block: BlockFunction, uncertainty: bool, workers, progress):
    """Frame by frame, ``workers`` threads (TensorFlow and NumPy release the GIL).

    Returns ``(denoised, spread)``, float32 arrays of ``image``'s shape (spread None unless
    ``uncertainty``).
    """
    from concurrent.futures import ThreadPoolExecutor

    denoised = np.empty(image.shape, np.float32)
    spread = np.empty(image.shape, np.float32) if uncertainty else None
    done = [0]

    def one(index: int) -> None:
        out, err = block(image[index], (0, 0))
        denoised[index] = out
        if uncertainty:
            spread[index] = err
        done[0] += 1
        if progress is not None:
            progress(done[0], len(image))

    if workers is None or workers <= 1:
        for index in range(len(image)):
            one(index)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(image))))
    return denoised, spread


class _Progress:
    """Thread-safe counter that reports finished tiles to a ``progress(done, total)`` callback."""

    def __init__(self, callback: ProgressCallback, total: int):
        import threading

        self.callback, self.total, self.done = callback, total, 0
        self.lock = threading.Lock()

    def step(self) -> None:
        with self.lock:
            self.done += 1
            self.callback(self.done, self.total)


class _TileTask:
    """The ``map_overlap`` function: denoise one overlapped tile (picklable for distributed).

    With ``uncertainty`` the tile comes back as complex64, the denoised tile as the real part
    and the spread as the imaginary part, so that one pass gives both (split lazily after).
    """

    def __init__(self, block, uncertainty, starts, depths, progress=None):
        self.block, self.uncertainty = block, uncertainty
        self.starts, self.depths, self.progress = starts, depths, progress

    def __call__(self, data: np.ndarray, block_info=None) -> np.ndarray:
        location = block_info[0]["chunk-location"][-2:]
        origin = tuple(
            int(max(0, starts[i] - depth))
            for starts, i, depth in zip(self.starts, location, self.depths, strict=True)
        )
        frames = data.reshape(-1, *data.shape[-2:])
        out = np.empty(frames.shape, np.complex64 if self.uncertainty else np.float32)
        for index, frame in enumerate(frames):
            denoised, spread = self.block(frame, origin)
            if self.uncertainty:
                out[index].real, out[index].imag = denoised, spread
            else:
                out[index] = denoised
        if self.progress is not None:
            self.progress.step()
        _release_memory()
        return out.reshape(data.shape)


def _release_memory() -> None:
    """Give freed heap memory back to the OS between tiles (glibc's ``malloc_trim``).

    Many threads allocating tile-sized arrays leave glibc's arenas holding freed memory, which
    counts in the resident size; Dask's own documentation recommends the same call. A no-op
    where the C library has no ``malloc_trim`` (macOS, Windows, musl).
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
        except (OSError, AttributeError, TypeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def run_dask(image, block: BlockFunction, depth: int, uncertainty: bool, progress=None):
    """Lazy tiled processing with ``map_overlap``: tiles share the whole image's grids.

    ``depth`` is the margin (px) each tile needs so that trimmed tiles equal the whole-image
    result. Returns lazy ``(denoised, spread)`` (spread None unless ``uncertainty``).
    """
    if min(min(c) for c in image.chunks[-2:]) < depth:
        side = max(TILE, 2 * depth)
        image = image.rechunk(
            {image.ndim - 2 + k: balanced_chunks(n, side) for k, n in enumerate(image.shape[-2:])}
        )
    if image.ndim == 3:
        image = image.rechunk({0: 1})
    chunks = image.chunks
    starts = [tuple(int(v) for v in np.cumsum((0, *c[:-1]))) for c in chunks[-2:]]
    # an axis held in one chunk needs no margin (dask cannot overlap beyond the array)
    depths = [depth if len(c) > 1 else 0 for c in chunks[-2:]]
    spatial_depth = {image.ndim - 2 + k: d for k, d in enumerate(depths)}
    if image.ndim == 3:
        spatial_depth[0] = 0
    counter = None
    if progress is not None:
        counter = _Progress(progress, math.prod(len(c) for c in chunks))
    dtype = np.complex64 if uncertainty else np.float32
    out = image.map_overlap(
        _TileTask(block, uncertainty, starts, depths, counter),
        depth=spatial_depth,
        boundary="none",
        dtype=dtype,
        meta=np.array((), dtype),
    )
    return (out.real, out.imag) if uncertainty else (out, None)


def run_tiled(image: np.ndarray, block: BlockFunction, depth: int, uncertainty, workers, progress):
    """An in-memory image too large for one pass, in :data:`TILE`-px tiles, block by block."""
    import dask.array as da

    side = max(TILE, 2 * depth)
    tiles = da.from_array(image, chunks=tuple(balanced_chunks(n, side) for n in image.shape))
    denoised, spread = run_dask(tiles, block, depth, uncertainty, progress)
    if spread is None:
        return compute_blocks(denoised, workers), None
    return compute_blocks((denoised, spread), workers)


def balanced_chunks(length: int, side: int) -> tuple[int, ...]:
    """Split ``length`` px into near-equal chunks of at least ``side`` px (or one chunk)."""
    count = max(1, length // side)
    base, extra = divmod(length, count)
    return tuple(base + (k < extra) for k in range(count))


def compute_blocks(results, workers):
    """Compute lazy tiled results block by block into preallocated arrays.

    Each block's culled graph (its overlapped input and the tile function) runs on the
    synchronous scheduler, ``workers`` blocks at a time (default one): Dask's own
    scheduler would prepare the overlapped inputs of many tiles ahead of the tile function
    (+0.3 GB at 8192² px), this keeps at most ``workers`` tiles in memory. The blocks of all
    results (denoised and spread) are computed together, so each tile runs once.
    """
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    import dask

    lazy = results if isinstance(results, tuple) else (results,)
    outputs = [np.empty(r.shape, r.dtype) for r in lazy]
    starts = [np.cumsum((0, *c[:-1])) for c in lazy[0].chunks]

    def one(index: tuple[int, ...]) -> None:
        blocks = dask.compute(*(r.blocks[index] for r in lazy), scheduler="sync")
        for output, block in zip(outputs, blocks, strict=True):
            region = tuple(
                slice(int(s[i]), int(s[i]) + n)
                for s, i, n in zip(starts, index, block.shape, strict=True)
            )
            output[region] = block

    indices = list(itertools.product(*(range(n) for n in lazy[0].numblocks)))
    workers = workers or 1
    with ThreadPoolExecutor(max(1, min(workers, len(indices)))) as pool:
        list(pool.map(one, indices))
    return tuple(outputs) if isinstance(results, tuple) else outputs[0]
