"""Ray directions of 3D star-convex polyhedra (StarDist's golden-spiral rays)."""
from __future__ import annotations

import numpy as np


class Rays3D:
    """``n`` unit ray directions on a golden spiral and the triangles between them.

    ``vertices``: (n, 3) float32 (z, y, x) unit vectors; ``faces``: (n_faces, 3) int vertex
    indices, oriented outwards. Equal to ``stardist.Rays_GoldenSpiral(n, anisotropy)``: the
    spiral is stretched by 1 / anisotropy, triangulated by its convex hull (qhull through
    SciPy, as StarDist does), then normalised.
    """

    def __init__(self, n: int = 96, anisotropy=None):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 4:
            raise ValueError(f"n_rays must be an integer >= 4, got {n!r}")
        if anisotropy is not None:
            anisotropy = tuple(float(a) for a in anisotropy)
            if len(anisotropy) != 3 or not all(np.isfinite(a) and a > 0 for a in anisotropy):
                raise ValueError(f"anisotropy must be 3 positive numbers (z, y, x), got {anisotropy!r}")
        self.n = int(n)
        self.anisotropy = anisotropy
        verts, faces = self._build()
        self._vertices = np.asarray(verts, np.float32)
        self._faces = np.asarray(faces, int)

    def _build(self):
        from scipy.spatial import ConvexHull

        n = self.n
        aniso = np.ones(3) if self.anisotropy is None else np.array(self.anisotropy)
        golden = (3.0 - np.sqrt(5.0)) * np.pi  # the smaller golden angle
        phi = golden * np.arange(n)
        z = np.linspace(-1, 1, n)
        rho = np.sqrt(1.0 - z**2)
        verts = np.stack([z, rho * np.sin(phi), rho * np.cos(phi)]).T
        verts = verts / aniso
        hull = ConvexHull(verts)
        # orient every triangle outwards (its determinant negative, StarDist's convention)
        faces = tuple(f[::-1] if np.linalg.det(verts[f]) > 0 else f for f in hull.simplices)
        verts /= np.linalg.norm(verts, axis=-1, keepdims=True)
        return verts, faces

    @property
    def vertices(self) -> np.ndarray:
        return self._vertices.copy()

    @property
    def faces(self) -> np.ndarray:
        return self._faces.copy()

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Rays3D(n={self.n}, anisotropy={self.anisotropy})"


def as_rays(rays) -> tuple[np.ndarray, np.ndarray]:
    """(vertices float32 (n, 3), faces int32 (f, 3)) from a Rays3D or any object with
    ``.vertices`` and ``.faces`` (a StarDist Rays object)."""
    try:
        verts = np.ascontiguousarray(np.asarray(rays.vertices, np.float32))
        faces = np.ascontiguousarray(np.asarray(rays.faces, np.int32))
    except AttributeError:
        raise ValueError(f"rays must have .vertices and .faces (use segrt's rays_3d), got {type(rays).__name__}") from None
    if verts.ndim != 2 or verts.shape[1] != 3 or len(verts) < 4:
        raise ValueError(f"rays.vertices must be (n >= 4, 3), got {verts.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.size == 0 or faces.min() < 0 or faces.max() >= len(verts):
        raise ValueError(f"rays.faces must be (f, 3) indices into {len(verts)} vertices, got {faces.shape}")
    return verts, faces


def sphere_scale_3d(boxes: np.ndarray) -> np.ndarray:
    """StarDist's axis scale for the 3D sphere tests, from the candidates' rounded boxes
    ((n, 6) z0, z1, y0, y1, x0, x1) in visiting order: the mean box extent per axis, summed in
    float32 in that order as the C++ kernel sums it, inverted relative to the largest."""
    n = len(boxes)
    extent = (np.asarray(boxes)[:, 1::2] - np.asarray(boxes)[:, ::2]).astype(np.float32)
    mean = np.cumsum(extent / np.float32(max(n, 1)), axis=0, dtype=np.float32)[-1] if n else np.zeros(3, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.float32(max(mean)) / mean).astype(np.float32)
