"""lib.data: the course's pair contract, seeding, file validation and errors, download, caches, summary.

Tests on real data use the MNIST copy that lib.data finds ($PYTORCH_DATA_DIR, see conftest.py).
Error and download tests run on small synthetic IDX files or on a local HTTP server, with the mirror
list pointed at 127.0.0.1: they never reach the network.
"""
import functools
import gzip
import hashlib
import http.server
import math
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from lib import data

UNREACHABLE = "http://127.0.0.1:9/"  # the discard port: nothing listens, the connection is refused
REPO = Path(__file__).resolve().parents[1]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def real_raw(split):
    return data.find_mnist(splits=(split,))


@pytest.fixture(scope="session")
def mnist_test_raw():
    """The real MNIST test files' folder, found before a test's `offline` fixture hides it."""
    return real_raw("test")


# ----------------------------------------------------------------------------- helpers: files, server

def write_idx(path, magic, dims, payload=None):
    """Write a gzipped IDX file; payload defaults to the right number of bytes for dims."""
    payload = bytes(i % 10 for i in range(math.prod(dims))) if payload is None else payload
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">I{len(dims)}I", magic, *dims) + payload)


def write_split(root, split="test", n=20, nb_labels=None, magic=data.IMAGE_MAGIC, side=28):
    """Synthetic MNIST files of `split` under root/MNIST/raw; returns (images path, labels path)."""
    raw = root / "MNIST" / "raw"
    images, labels = (raw / name for name in data.FILES[split])
    write_idx(images, magic, (n, side, side))
    write_idx(labels, data.LABEL_MAGIC, (n if nb_labels is None else nb_labels,))
    return images, labels


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No MNIST anywhere and no network: empty $PYTORCH_DATA_DIR and ./data, mirrors on loopback."""
    monkeypatch.setattr(data, "MIRRORS", [UNREACHABLE])
    monkeypatch.setenv("PYTORCH_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):  # a proxy would otherwise be asked for 127.0.0.1 too
        if key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    return tmp_path


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 (port chosen by the OS) serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the course's contract

def test_shapes_dtypes_and_values():
    sets = data.generate_pair_sets(1000, seed=0)
    for input, target, classes in (sets[:3], sets[3:]):
        assert input.shape == (1000, 2, 14, 14) and input.dtype == torch.float32
        assert target.shape == (1000,) and target.dtype == torch.int64
        assert classes.shape == (1000, 2) and classes.dtype == torch.int64
        assert input.min() >= 0 and input.max() <= 255 and input.max() > 200  # raw scale, not normalised
        assert torch.equal(input * 4, (input * 4).round())  # means of 4 bytes
        assert classes.min() >= 0 and classes.max() <= 9
        assert torch.equal(target, (classes[:, 0] <= classes[:, 1]).long())
        assert 0.45 < target.float().mean() < 0.65  # P(a <= b) is about 0.55


def test_pool_is_the_2x2_average_of_the_source_images():
    for split in ("train", "test"):
        images, labels = data.load_mnist(split)
        assert images.dtype == torch.uint8 and images.shape[1:] == (28, 28) and labels.dtype == torch.int64
        n = len(images)
        expected = images.double().view(n, 14, 2, 14, 2).mean((2, 4)).float()  # (n, 14, 14), by hand
        pool, pool_labels = data.load_pool(split)
        assert torch.equal(pool, expected) and pool_labels is labels


def test_pair_images_match_source_images():
    """Each sampled pair image is, exactly, the pooled version of one source image of its class."""
    sets = data.generate_pair_sets(200, seed=1)
    for (input, _, classes), split in ((sets[:3], "train"), (sets[3:], "test")):
        images, labels = data.load_mnist(split)
        pooled = images.double().view(len(images), 14, 2, 14, 2).mean((2, 4)).float()  # (n, 14, 14)
        source = {x.numpy().tobytes(): i for i, x in enumerate(pooled)}  # MNIST holds no duplicate
        for k in range(0, 200, 3):
            for j in range(2):
                assert labels[source[input[k, j].numpy().tobytes()]] == classes[k, j]


def test_no_image_reused_and_val_disjoint_from_train():
    nb_train_pool, nb_test_pool = len(data.load_pool("train")[1]), len(data.load_pool("test")[1])
    train, val, test = data._round_indices(1000, 1000, 1000, nb_train_pool, nb_test_pool, gen(0))
    assert train.shape == val.shape == test.shape == (1000, 2)
    for index in (train, val, test, torch.cat([train, val])):
        assert len(index.flatten().unique()) == index.numel()
    # the sets are exactly these pool images
    rd = data.make_round_data(0)
    pool, labels = data.load_pool("train")
    assert torch.equal(rd.train.input, pool[train]) and torch.equal(rd.val.input, pool[val])
    assert torch.equal(rd.test.input, data.load_pool("test")[0][test])
    assert torch.equal(rd.val.classes, labels[val])
    # and, independently of the indices, no image repeats within the round (MNIST has no duplicates)
    round_images = torch.cat([rd.train.input, rd.val.input]).flatten(0, 1).flatten(1)  # (4000, 196)
    assert len(round_images.unique(dim=0)) == 4000


def test_seed_is_deterministic():
    a, b, c = (data.generate_pair_sets(100, seed=s) for s in (5, 5, 6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[3], c[3])
    r1, r2 = data.make_round_data(5, 50, 50, 50), data.make_round_data(5, 50, 50, 50)
    assert all(torch.equal(x, y) for s1, s2 in zip((r1.train, r1.val, r1.test), (r2.train, r2.val, r2.test))
               for x, y in zip(s1.tuple(), s2.tuple()))
    assert r1.seed == 5


def test_generate_pair_sets_equals_make_round_data():
    for seed in (0, 3):
        sets = data.generate_pair_sets(300, seed=seed)
        rd = data.make_round_data(seed, 300, 0, 300)
        assert len(rd.val) == 0
        assert all(torch.equal(x, y) for x, y in zip(sets, (*rd.train.tuple(), *rd.test.tuple())))


def test_seed_none_uses_the_global_generator():
    torch.manual_seed(0)
    a = data.generate_pair_sets(100)
    torch.manual_seed(0)
    b = data.generate_pair_sets(100)
    c = data.generate_pair_sets(100)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(b[0], c[0]) and not torch.equal(b[3], c[3])


def test_seed_none_follows_the_course_recipe():
    """The course file: randperm of the training pool, first 2*nb as nb x 2, then the test pool."""
    torch.manual_seed(7)
    ours = data.generate_pair_sets(50)
    torch.manual_seed(7)
    expected = []
    for split in ("train", "test"):
        pool, labels = data.load_pool(split)
        index = torch.randperm(len(pool))[:100].view(50, 2)
        classes = labels[index]
        expected += [pool[index], (classes[:, 0] <= classes[:, 1]).long(), classes]
    assert all(torch.equal(x, y) for x, y in zip(ours, expected))


def test_a_seed_leaves_the_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    data.generate_pair_sets(100, seed=1)
    data.make_round_data(2, 10, 10, 10)
    assert torch.equal(torch.get_rng_state(), state)


def test_pairset_and_normalize():
    rd = data.make_round_data(0, 200, 100, 100)
    assert len(rd.train) == 200 and len(rd.val) == 100
    moved = rd.train.to("cpu")
    assert all(torch.equal(x, y) for x, y in zip(moved.tuple(), rd.train.tuple()))
    before = rd.val.input.clone()
    train, val, test = data.normalize(rd.train, rd.val, rd.test)
    assert abs(train.input.mean().item()) < 1e-4 and abs(train.input.std().item() - 1) < 1e-4
    mean, std = rd.train.input.mean(), rd.train.input.std()  # the training set's, for every set
    assert torch.allclose(val.input, (rd.val.input - mean) / std)
    assert torch.allclose(test.input, (rd.test.input - mean) / std)
    assert torch.equal(rd.val.input, before)  # the inputs given are left as they were
    assert val.target is rd.val.target and test.classes is rd.test.classes


@pytest.mark.parametrize("nb", [0, -3, 1.5, True, "10", None])
def test_bad_nb(nb):
    with pytest.raises(ValueError, match="nb must be an int"):
        data.generate_pair_sets(nb, seed=0)


def test_nb_too_large_states_the_pool_size():
    nb_pool = len(data.load_pool("train")[1])
    with pytest.raises(ValueError, match=rf"{nb_pool // 2 + 1} training \+ 0 validation pairs need "
                                         rf"{nb_pool + 2} distinct images.*pool holds {nb_pool} images"):
        data.generate_pair_sets(nb_pool // 2 + 1, seed=0)
    # train and val share the training pool: each fits alone, not together
    with pytest.raises(ValueError, match=rf"share the training pool.*holds {nb_pool} images"):
        data.make_round_data(0, nb_pool // 4 + 1, nb_pool // 4 + 1, 10)
    with pytest.raises(ValueError, match=r"test pool holds \d+ images"):
        data.make_round_data(0, 10, 10, len(data.load_pool("test")[1]))
    with pytest.raises(ValueError, match="nb_val must be an int >= 0"):
        data.make_round_data(0, 10, -1, 10)


# ----------------------------------------------------------------------------- files: validation and errors

def test_counts_come_from_the_headers(tmp_path):
    """A small valid IDX set (30 images) loads, and pair sizes are checked against its 30, not 60,000."""
    for split in ("train", "test"):
        write_split(tmp_path, split, n=30)
    images, labels = data.load_mnist("train", data_dir=tmp_path)
    assert images.shape == (30, 28, 28) and labels.shape == (30,)
    assert data.find_mnist(tmp_path) == (tmp_path / "MNIST" / "raw").resolve()
    assert len(data.make_round_data(0, 5, 5, 5, data_dir=tmp_path).val) == 5
    with pytest.raises(ValueError, match="need 32 distinct images.*pool holds 30 images"):
        data.make_round_data(0, 8, 8, 5, data_dir=tmp_path)


def test_no_files_and_no_network(offline):
    empty = offline / "empty"
    with pytest.raises(data.MnistError) as info:
        data.load_mnist("test", data_dir=empty, mirrors=[UNREACHABLE])
    message = str(info.value)
    for where in (empty, offline / "env", offline / "data"):  # every folder tried is named
        assert str(where.resolve() / "MNIST" / "raw") in message
    assert "t10k-images-idx3-ubyte.gz" in message and UNREACHABLE in message
    assert "PYTORCH_DATA_DIR=DIR" in message
    assert not empty.exists()  # the failed download leaves no folders behind
    # without data_dir the download goes to ./data, through the module's MIRRORS
    with pytest.raises(data.MnistError, match="127.0.0.1:9"):
        data.generate_pair_sets(10)
    assert not (offline / "data").exists()


@pytest.mark.parametrize("damage, expected", [
    ("truncated", "truncated or corrupt"),
    ("corrupt", "truncated or corrupt"),
    ("not_gzip", "truncated or corrupt"),
    ("magic", "magic number 2049, expected 2051"),
    ("size", "images are 32x32, expected 28x28"),
    ("count", "holds 20 images but .*t10k-labels-idx1-ubyte.gz holds 19 labels"),
    ("short", "header promises 20 x 28 x 28 image bytes but the file holds 15000"),
])
def test_bad_files_give_clear_errors(offline, damage, expected):
    images, labels = write_split(offline, "test", n=20,
                                 nb_labels=19 if damage == "count" else None,
                                 magic=data.LABEL_MAGIC if damage == "magic" else data.IMAGE_MAGIC,
                                 side=32 if damage == "size" else 28)
    blob = images.read_bytes()
    if damage == "truncated":
        images.write_bytes(blob[:len(blob) // 2])
    elif damage == "corrupt":  # garbage in the middle of the deflate stream
        images.write_bytes(blob[:20] + bytes(255 - b for b in blob[20:-20]) + blob[-20:])
    elif damage == "not_gzip":  # e.g. an HTML error page saved under the file's name
        images.write_bytes(b"<html>404</html>")
    elif damage == "short":
        write_idx(images, data.IMAGE_MAGIC, (20, 28, 28), payload=bytes(15000))
    with pytest.raises(data.MnistError, match=expected) as info:
        data.load_mnist("test", data_dir=offline)
    assert str(images) in str(info.value)  # the message names the bad file
    if damage in ("truncated", "corrupt", "not_gzip"):
        assert "delete it and retry" in str(info.value)
        assert info.value.__suppress_context__  # no gzip/zlib traceback chained under it


# ----------------------------------------------------------------------------- download

def test_download_lands_and_loads(mnist_test_raw, offline, server):
    www, url = server
    (www / "good").mkdir()
    (www / "bad").mkdir()
    for name in data.FILES["test"]:
        shutil.copyfile(mnist_test_raw / name, www / "good" / name)
        (www / "bad" / name).write_bytes(b"not the official file")
    target = offline / "dl"
    # the first mirror is unreachable, the second serves wrong bytes: both are skipped
    mirrors = [UNREACHABLE, url + "bad/", url + "good"]  # "good" without "/": joined all the same
    images, labels = data.load_mnist("test", data_dir=target, mirrors=mirrors)
    raw = target / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(data.FILES["test"])  # no temporary file left
    assert all(md5(raw / name) == data.MD5[name] for name in data.FILES["test"])
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert torch.equal(images, data.load_mnist("test", data_dir=mnist_test_raw.parents[1])[0])


def test_download_md5_mismatch_is_refused(mnist_test_raw, offline, server):
    www, url = server
    images_name, labels_name = data.FILES["test"]
    served = bytearray((mnist_test_raw / labels_name).read_bytes())
    served[100] ^= 0xFF  # one flipped byte: a different md5
    (www / labels_name).write_bytes(served)
    # the images file is already there: it must stay untouched
    raw = offline / "dl" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copyfile(mnist_test_raw / images_name, raw / images_name)
    with pytest.raises(data.MnistError) as info:
        data.load_mnist("test", data_dir=offline / "dl", mirrors=[url])
    message = str(info.value)
    assert "md5 mismatch" in message and url + labels_name in message and data.MD5[labels_name] in message
    assert [p.name for p in raw.iterdir()] == [images_name]  # no temporary file, no final file
    assert md5(raw / images_name) == data.MD5[images_name]


def test_download_md5_mismatch_leaves_nothing(mnist_test_raw, offline, server, monkeypatch):
    www, url = server
    for name in data.FILES["test"]:
        shutil.copyfile(mnist_test_raw / name, www / name)
    monkeypatch.setitem(data.MD5, data.FILES["test"][0], "0" * 32)
    with pytest.raises(data.MnistError, match=r"md5 mismatch: got 9fb629c4189551a2d022fa330f9573f3"):
        data.load_mnist("test", data_dir=offline / "dl", mirrors=[url])
    assert not (offline / "dl").exists()


# ----------------------------------------------------------------------------- caches, info, summary, import

def test_second_load_is_cached():
    first = data.load_mnist("train")
    start = time.perf_counter()
    second = data.load_mnist("train")
    pool = data.load_pool("train")
    assert time.perf_counter() - start < 0.05
    assert second[0] is first[0] and second[1] is first[1]
    assert data.load_pool("train")[0] is pool[0]


def test_pool_info():
    info = data.pool_info()
    for split in ("train", "test"):
        raw = real_raw(split)
        assert info[split]["dir"] == str(raw)
        assert info[split]["nb_images"] == len(data.load_mnist(split)[1])
        assert info[split]["md5"] == {name: md5(raw / name) for name in data.FILES[split]}
    assert data.pool_info() == info


def test_print_data_summary_writes_the_figure(tmp_path, capsys):
    path = data.print_data_summary(figures_dir=tmp_path / "figs")
    assert path == tmp_path / "figs" / "sample_pairs.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "train pool:" in out and "test pool:" in out and data.MD5["t10k-images-idx3-ubyte.gz"] in out
    assert out.count("target 1 for") == 2


def test_import_does_no_io(tmp_path):
    """Importing lib.data reads no file, parses no argv and creates nothing (here: no ./data)."""
    code = ("import sys; sys.argv[1:] = ['--bogus']; import lib.data as d; "
            "assert not d._parsed.cache_info().currsize and not d._md5.cache_info().currsize")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTORCH_DATA_DIR=str(tmp_path / "nowhere"))
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=60)
    assert list(tmp_path.iterdir()) == []
