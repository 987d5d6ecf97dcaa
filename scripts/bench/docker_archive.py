"""Writes an encrypted `docker save` archive of about a given size, the way
PROTOCOL §1.4 has it: images.enc = IV || AES-256-CBC(K, IV, PKCS#7(archive)).

The archive is one image: one layer (a tar holding one big file of random
bytes), its config (rootfs.diff_ids = sha256 of the layer tar) and
manifest.json, as tests/real/docker.rs builds it. It streams straight into
`openssl enc`, so no plaintext archive is ever written to disk.
"""

import hashlib
import json
import os
import subprocess
import tarfile
import time

BLOCK = 512
CHUNK = 16 << 20


def header(name, size, directory=False):
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mode = 0o755 if directory else 0o644
    info.mtime = 1_700_000_000
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def padding(size):
    return b"\0" * (-size % BLOCK)


class Entry:
    """Writes one tar entry's bytes to `out`, hashing them."""

    def __init__(self, out, name, size):
        out.write(header(name, size))
        self.out, self.size, self.written = out, size, 0

    def write(self, data):
        self.out.write(data)
        self.written += len(data)

    def close(self):
        if self.written != self.size:
            raise ValueError(f"tar entry: wrote {self.written} of {self.size} bytes")
        self.out.write(padding(self.size))


def write_encrypted(path, layer_bytes, repo_tag, key):
    """Writes `path`; returns {"iv", "plaintext_len", "seconds"}."""
    started = time.monotonic()
    iv = os.urandom(16)
    blob_len = max(BLOCK, layer_bytes - layer_bytes % BLOCK)
    # Inner tar: header, the blob (a whole number of blocks), two zero blocks.
    layer_len = BLOCK + blob_len + 2 * BLOCK
    layer_dir = "bench-layer"
    random_block = os.urandom(CHUNK)
    with open(path, "wb") as out:
        out.write(iv)
        out.flush()
        enc = subprocess.Popen(
            ["openssl", "enc", "-e", "-aes-256-cbc", "-K", key.hex(), "-iv", iv.hex(), "-bufsize", str(1 << 20)],
            stdin=subprocess.PIPE,
            stdout=out,
        )
        plain = Counting(enc.stdin)
        plain.write(header(layer_dir + "/", 0, directory=True))
        layer = Entry(plain, f"{layer_dir}/layer.tar", layer_len)
        diff = hashlib.sha256()

        def layer_write(data):
            diff.update(data)
            layer.write(data)

        layer_write(header("blob.bin", blob_len))
        left = blob_len
        while left:
            piece = random_block[: min(left, CHUNK)]
            layer_write(piece)
            left -= len(piece)
        layer_write(b"\0" * (2 * BLOCK))
        layer.close()

        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff.hexdigest()}"]},
                "config": {},
            },
            separators=(",", ":"),
        ).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        manifest = json.dumps(
            [{"Config": config_name, "RepoTags": [repo_tag], "Layers": [f"{layer_dir}/layer.tar"]}]
        ).encode()
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            entry = Entry(plain, name, len(data))
            entry.write(data)
            entry.close()
        plain.write(b"\0" * (2 * BLOCK))
        enc.stdin.close()
        if enc.wait() != 0:
            raise RuntimeError(f"openssl enc exited with {enc.returncode}")
    return {"iv": iv, "plaintext_len": plain.count, "seconds": time.monotonic() - started}


class Counting:
    def __init__(self, out):
        self.out, self.count = out, 0

    def write(self, data):
        self.out.write(data)
        self.count += len(data)
