"""agent.store.cid against an independent implementation: npm ipfs-unixfs-importer.

The node script (unixfs_cid.mjs) runs the importer with kubo's `ipfs add --cid-version=1`
settings and prints each file's root CID and distinct block count; ours must be identical.
The npm packages are installed from package-lock.json (`npm ci`) on first use; the test is
skipped only when node or npm is not on PATH.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.store import cid

HERE = Path(__file__).resolve().parent
K = cid.CHUNK_SIZE

pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="node and npm are needed for the npm UnixFS reference")


@pytest.fixture(scope="module")
def importer() -> Path:
    """The node script, with its npm dependencies installed (npm ci, once)."""
    if not (HERE / "node_modules" / "ipfs-unixfs-importer").is_dir():
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return HERE / "unixfs_cid.mjs"


def _npm(script: Path, files: list[Path], *flags: str) -> list[tuple[str, int]]:
    """(root CID, distinct blocks) per file, from one node process."""
    done = subprocess.run(["node", str(script), *flags, *map(str, files)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    return [(c, int(n)) for c, n in rows]


def _ours(data: bytes, chunk_size: int = K, max_links: int = cid.MAX_LINKS) -> tuple[str, int]:
    dag = cid.build_dag(data, chunk_size, max_links)
    return cid.cid_text(dag.root), len(dag.blocks)


def _write(tmp_path: Path, datas: list[bytes]) -> list[Path]:
    paths = []
    for i, data in enumerate(datas):
        p = tmp_path / f"f{i}"
        p.write_bytes(data)
        paths.append(p)
    return paths


SIZES = [0, 1, 11, K - 1, K, K + 1, 2 * K, 174 * K, 174 * K + 1, 175 * K]


def test_boundary_sizes_match_npm(importer, tmp_path):
    sample = random.Random("aitn-cid").randbytes(175 * K)  # the unit test's data
    datas = [sample[:n] for n in SIZES]
    ours = [_ours(d) for d in datas]
    assert _npm(importer, _write(tmp_path, datas)) == ours
    # The unit test pins the same values: the two suites must agree on what kubo prints.
    assert ours[0][0] == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert [n for _, n in ours] == [1, 1, 1, 1, 1, 3, 3, 175, 178, 178]


def test_repeated_chunks_match_npm(importer, tmp_path):
    datas = [b"\x00" * (3 * K), b"ab" * (200 * K)]  # de-duplicated leaves
    assert _npm(importer, _write(tmp_path, datas)) == [_ours(d) for d in datas]


def test_deep_trees_match_npm(importer, tmp_path):
    # Small chunks and few links reach depths kubo's defaults would need gigabytes for.
    rng = random.Random(7)
    datas = [rng.randbytes(n) for n in (9 * 4, 9 * 4 + 1, 27 * 4, 27 * 4 + 3, 1000, 4 * 3**6 + 1)]
    ours = [_ours(d, chunk_size=4, max_links=3) for d in datas]
    assert _npm(importer, _write(tmp_path, datas), "--chunk-size", "4", "--max-links", "3") == ours


@pytest.mark.slow
def test_twenty_megabytes_match_npm(importer, tmp_path):
    data = random.Random("twenty").randbytes(20 * 1024 * 1024 + 12345)
    assert _npm(importer, _write(tmp_path, [data])) == [_ours(data)]
