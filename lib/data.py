"""MNIST files -> 14x14 digit pairs: the data of EE-559 Project 1 (the course's `generate_pair_sets`).

A pair is two MNIST digits, each average-pooled from 28x28 to 14x14 (values kept in 0..255), stacked
as 2 channels. Its target is 1 iff the first digit is <= the second; its classes are the two digits.
Training and validation pairs come from the MNIST training pool, test pairs from the test pool, and
no image is used twice within a round.

    train_input, train_target, train_classes, test_input, test_target, test_classes = \\
        generate_pair_sets(1000)                     # the course's call, drawn from torch's global RNG
    rd = make_round_data(seed=0)                     # one round: train / val / test PairSets
    train, val, test = normalize(rd.train, rd.val, rd.test)

Files: the four IDX .gz files in `MNIST/raw/` under, in order, the `data_dir` argument,
$PYTORCH_DATA_DIR, ./data. If none holds them they are downloaded from `MIRRORS` (md5-checked).
A file already on disk is checked by its IDX header only, so a valid subset (the offline 10,000-image
training file) is accepted: every count is read from the headers. Parsed and pooled arrays are cached
per process, so a second call costs nothing; the cached tensors are shared, do not modify them in place.
"""
import contextlib
import functools
import gzip
import hashlib
import math
import numbers
import os
import struct
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

MIRRORS = [  # tried in order; tests replace this list (or pass mirrors=) to stay off the network
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
FILES = {  # split -> (images file, labels file)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MD5 = {  # the official files; checked on download only, a valid subset already on disk is accepted
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # IDX: 0x08 (ubyte) then the number of dimensions (3 or 1)


class MnistError(RuntimeError):
    """The MNIST files cannot be found, downloaded or parsed; the message says which and what to do."""


# ----------------------------------------------------------------------------- files

def _raw_dir(root):
    return Path(root).expanduser().resolve() / "MNIST" / "raw"


def find_mnist(data_dir=None, splits=("train", "test"), mirrors=None):
    """The `MNIST/raw` folder holding the files of `splits`: the first of data_dir, $PYTORCH_DATA_DIR,
    ./data that has them all; failing that, the missing files are downloaded into data_dir (if given)
    or ./data, from `mirrors` (default `MIRRORS`)."""
    if any(split not in FILES for split in splits):
        raise ValueError(f"splits must be among {list(FILES)}, got {splits!r}")
    names = [name for split in splits for name in FILES[split]]
    tried = [(d, why) for d, why in ((data_dir, "data_dir argument"),
                                     (os.environ.get("PYTORCH_DATA_DIR"), "$PYTORCH_DATA_DIR"),
                                     ("data", "./data")) if d]
    for root, _ in tried:
        if all((_raw_dir(root) / name).is_file() for name in names):
            return _raw_dir(root)
    raw = _raw_dir(data_dir if data_dir else "data")
    try:
        _download([n for n in names if not (raw / n).is_file()], raw, MIRRORS if mirrors is None else mirrors)
    except MnistError as e:
        where = "\n".join(f"  {_raw_dir(root)}  ({why})" for root, why in tried)
        raise MnistError(f"MNIST files {', '.join(names)} not found in:\n{where}\nand {e}\n"
                         "Without network: put the four MNIST .gz files in DIR/MNIST/raw, then set "
                         "PYTORCH_DATA_DIR=DIR (or pass data_dir=DIR).") from None
    return raw


def _download(names, raw, mirrors):
    """Fetch each file of `names` into `raw` from the first mirror that serves it with the official md5."""
    created = [d for d in (raw.parent.parent, raw.parent, raw) if not d.exists()]
    raw.mkdir(parents=True, exist_ok=True)
    try:
        for name in names:
            errors = []
            for mirror in mirrors:
                url = mirror.rstrip("/") + "/" + name
                try:
                    _fetch(url, raw / name, MD5[name])
                    break
                except (OSError, ValueError, MnistError) as e:  # URLError, HTTPError, timeouts are OSErrors
                    errors.append(f"  {url}: {e}")
            else:
                raise MnistError(f"the download of {name} into {raw} failed:\n" + "\n".join(errors))
    except BaseException:
        for d in reversed(created):  # leave no empty folders behind; a non-empty one raises and stays
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _fetch(url, dest, md5):
    """Download into a temporary file beside `dest`, renamed into place only once its md5 matches,
    so an interrupted or bad download never looks like a valid file."""
    from lib.experiments import atomic_path

    digest = hashlib.md5()
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f, urllib.request.urlopen(url, timeout=30) as r:
            size = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := r.read(1 << 16):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise MnistError(f"md5 mismatch: got {digest.hexdigest()}, official {md5} "
                             "(the bad download was removed)")


def _read_idx(path, magic):
    """(dims, payload) of an IDX .gz file, after checking its magic and that its length fits the header."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise MnistError(f"{path} is truncated or corrupt ({e}); delete it and retry "
                         "(a missing file is downloaded again)") from None
    kind = "image" if magic == IMAGE_MAGIC else "label"
    found = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
    if found != magic:
        raise MnistError(f"{path} is not an MNIST {kind} file: magic number {found}, expected {magic}")
    head = 4 + 4 * (magic & 0xFF)  # the magic's last byte is the number of dimensions
    if len(data) < head:
        raise MnistError(f"{path} ends inside its IDX header; delete it and retry")
    dims = struct.unpack(f">{magic & 0xFF}I", data[4:head])
    if dims[0] == 0 or len(data) != head + math.prod(dims):
        raise MnistError(f"{path}: its header promises {' x '.join(map(str, dims))} {kind} bytes but the "
                         f"file holds {len(data) - head}; delete it and retry")
    return dims, bytearray(data[head:])  # bytearray: torch.frombuffer wants a writable buffer


@functools.cache
def _parsed(raw, split):
    """Images (n, 28, 28) uint8 and labels (n,) int64 of one folder's split, parsed once."""
    image_path, label_path = (raw / name for name in FILES[split])
    (n, h, w), pixels = _read_idx(image_path, IMAGE_MAGIC)
    if (h, w) != (28, 28):
        raise MnistError(f"{image_path}: images are {h}x{w}, expected 28x28")
    (m,), digits = _read_idx(label_path, LABEL_MAGIC)
    if n != m:
        raise MnistError(f"{image_path} holds {n} images but {label_path} holds {m} labels: "
                         "the files do not belong together; delete them and retry")
    labels = torch.frombuffer(digits, dtype=torch.uint8).long()  # (n,)
    if labels.max() > 9:
        raise MnistError(f"{label_path}: label {labels.max().item()} is not a digit")
    return torch.frombuffer(pixels, dtype=torch.uint8).view(n, 28, 28), labels  # (n, 28, 28), (n,)


@functools.cache
def _pooled(raw, split):
    """One folder's split pooled 2x2 to 14x14: (n, 14, 14) float32 in 0..255, computed once."""
    return F.avg_pool2d(_parsed(raw, split)[0][:, None].float(), kernel_size=2)[:, 0]


def load_mnist(split, data_dir=None, mirrors=None):
    """MNIST `split` ("train" or "test"): images (n, 28, 28) uint8 and labels (n,) int64, parsed once."""
    return _parsed(find_mnist(data_dir, (split,), mirrors), split)


def load_pool(split, data_dir=None, mirrors=None):
    """The `split` pool pooled 2x2 to 14x14: input (n, 14, 14) float32 in 0..255, labels (n,) int64."""
    raw = find_mnist(data_dir, (split,), mirrors)
    return _pooled(raw, split), _parsed(raw, split)[1]


@functools.cache
def _md5(path):
    """md5 hex digest of a file, read once."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def pool_info(data_dir=None):
    """Per pool ("train", "test"): the folder used, its number of images and the md5 of its two files."""
    info = {}
    for split, names in FILES.items():
        raw = find_mnist(data_dir, (split,))
        info[split] = {"dir": str(raw), "nb_images": len(_parsed(raw, split)[1]),
                       "md5": {name: _md5(raw / name) for name in names}}
    return info


# ----------------------------------------------------------------------------- pairs

@dataclass
class PairSet:
    input: torch.Tensor  # (N, 2, 14, 14) float32
    target: torch.Tensor  # (N,) int64, 1 iff classes[:, 0] <= classes[:, 1]
    classes: torch.Tensor  # (N, 2) int64, the two digits

    def __len__(self):
        return self.target.size(0)

    def to(self, device):
        return PairSet(self.input.to(device), self.target.to(device), self.classes.to(device))

    def tuple(self):
        return self.input, self.target, self.classes


@dataclass
class RoundData:
    train: PairSet
    val: PairSet  # drawn from the training pool, disjoint from train at the image level
    test: PairSet
    seed: int | None  # None: drawn from torch's global generator


def _count(name, nb, minimum=1):
    if isinstance(nb, bool) or not isinstance(nb, numbers.Integral) or nb < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {nb!r}")
    return int(nb)


def _round_indices(nb_train, nb_val, nb_test, nb_train_pool, nb_test_pool, generator=None):
    """Pool indices (nb, 2) of the train, val and test pairs. The training-pool permutation is drawn
    first, then the test-pool one: the course's order, so a seeded global RNG gives the course's pairs."""
    need = 2 * (nb_train + nb_val)
    if need > nb_train_pool:
        raise ValueError(f"{nb_train} training + {nb_val} validation pairs need {need} distinct images "
                         f"(2 per pair; train and val share the training pool), but the MNIST training "
                         f"pool holds {nb_train_pool} images")
    if 2 * nb_test > nb_test_pool:
        raise ValueError(f"{nb_test} test pairs need {2 * nb_test} distinct images (2 per pair), "
                         f"but the MNIST test pool holds {nb_test_pool} images")
    perm = torch.randperm(nb_train_pool, generator=generator)  # (nb_train_pool,)
    train = perm[:2 * nb_train].view(nb_train, 2)  # (nb_train, 2)
    val = perm[2 * nb_train:need].view(nb_val, 2)  # (nb_val, 2)
    test = torch.randperm(nb_test_pool, generator=generator)[:2 * nb_test].view(nb_test, 2)  # (nb_test, 2)
    return train, val, test


def _pairs(pool, labels, index):
    classes = labels[index]  # (N, 2)
    return PairSet(pool[index], (classes[:, 0] <= classes[:, 1]).long(), classes)  # (N, 2, 14, 14), (N,)


def make_round_data(seed, nb_train=1000, nb_val=1000, nb_test=1000, data_dir=None):
    """Train, val and test PairSets of one round, drawn from a private generator seeded with `seed`
    (None: torch's global generator). Val takes the training-pool images that follow train's."""
    nb_train, nb_val = _count("nb_train", nb_train), _count("nb_val", nb_val, minimum=0)
    nb_test = _count("nb_test", nb_test)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    generator = None if seed is None else torch.Generator().manual_seed(int(seed))
    train_pool, train_labels = load_pool("train", data_dir)
    test_pool, test_labels = load_pool("test", data_dir)
    train, val, test = _round_indices(nb_train, nb_val, nb_test,
                                      len(train_labels), len(test_labels), generator)
    return RoundData(_pairs(train_pool, train_labels, train), _pairs(train_pool, train_labels, val),
                     _pairs(test_pool, test_labels, test), seed)


def generate_pair_sets(nb, seed=None, data_dir=None):
    """The course's contract: train_input, train_target, train_classes, test_input, test_target,
    test_classes, with nb pairs each. seed=None draws from torch's global generator like the course
    file; a seed uses a private generator (the global RNG state is untouched) and gives exactly the
    train and test sets of make_round_data(seed, nb, 0, nb)."""
    nb = _count("nb", nb)
    rd = make_round_data(seed, nb, 0, nb, data_dir)
    return (*rd.train.tuple(), *rd.test.tuple())


def normalize(train, *others):
    """New PairSets (train, *others), inputs standardised by the TRAINING set's mean and std (one scalar
    each over all its pixels), so nothing is learnt from val or test. Targets and classes are shared."""
    mean, std = train.input.mean(), train.input.std()
    return tuple(PairSet((s.input - mean) / std, s.target, s.classes) for s in (train, *others))


# ----------------------------------------------------------------------------- summary

def print_data_summary(data_dir=None, figures_dir="figures"):
    """Print pool sizes and md5s and the target balance of a 1000-pair draw; save a grid of sample
    pairs to figures_dir/sample_pairs.png and return its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg on a bare Figure: no pyplot state
    from matplotlib.figure import Figure

    for split, d in pool_info(data_dir).items():
        print(f"{split} pool: {d['nb_images']} images in {d['dir']}")
        for name, md5 in d["md5"].items():
            note = "official" if md5 == MD5[name] else "not the official md5: a subset?"
            print(f"  {name}  md5 {md5}  ({note})")
    rd = make_round_data(0, 1000, 0, 1000, data_dir)
    for name, s in (("train", rd.train), ("test", rd.test)):
        # P(a <= b) = 1/2 + P(a = b)/2, about 55% for ten balanced digits
        print(f"{name}: {len(s)} pairs (seed 0), target 1 for {s.target.float().mean().item():.1%}")

    fig = Figure(figsize=(8, 3.3), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle("Training pairs (seed 0): 14x14 digits, target = 1 iff first <= second")
    gap = torch.full((14, 1), 128.0)  # (14, 1) grey bar between the two digits
    for ax, x, c, t in zip(fig.subplots(2, 4).flat, rd.train.input, rd.train.classes, rd.train.target):
        ax.imshow(torch.cat([x[0], gap, x[1]], dim=1).numpy(), cmap="gray", vmin=0, vmax=255)  # (14, 29)
        ax.set_title(f"{c[0].item()} vs {c[1].item()}: target {t.item()}")
        ax.axis("off")
    path = Path(figures_dir) / "sample_pairs.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return path
