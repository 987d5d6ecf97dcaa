#!/usr/bin/env python3
"""Measures two §5.3 figures against a running `azaion-loader serve` binary:

1. flood: peak RSS growth (VmHWM) of the loader while a client sends 256 MiB
   of `multipart/form-data; boundary=X` holding no boundary;
2. spool: the most free space a data-first upload (192 MiB) takes from the
   cache's file system before login (statvfs, polled every 5 ms; an unnamed
   spool file shows there too).

    scripts/bench/boundary.py target/release/azaion-loader

Needs root for the tmpfs that holds the cache (so that nothing else on the
machine moves the free-space figure). Prints one line per figure.
"""
import os, re, socket, subprocess, sys, tempfile, threading, time

def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")

def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize

def start(binary, cache):
    env = dict(os.environ, LOADER_LISTEN="127.0.0.1:0", RESOURCE_API_URL="http://127.0.0.1:9",
               MODEL_CACHE_DIR=cache, MODEL_CACHE_MIN_FREE_BYTES="0", RUST_LOG="info")
    p = subprocess.Popen([binary, "serve"], env=env, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        m = re.search(r"listening on http://([0-9.]+):(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, (m.group(1), int(m.group(2)))
    raise RuntimeError("the loader did not start")

def send(addr, head, body_len, first=b"", fill=b"A"):
    s = socket.create_connection(addr)
    s.settimeout(60)
    s.sendall(head)
    answer = []
    def reader():
        try:
            answer.append(s.recv(4096))
        except OSError as e:
            answer.append(repr(e).encode())
    t = threading.Thread(target=reader, daemon=True); t.start()
    sent = 0
    chunk = fill * (1 << 20)
    try:
        if first:
            s.sendall(first); sent += len(first)
        while sent < body_len and t.is_alive():
            n = min(len(chunk), body_len - sent)
            s.sendall(chunk[:n]); sent += n
    except OSError:
        pass
    t.join(30)
    s.close()
    first_line = (answer[0].split(b"\r\n", 1)[0] if answer else b"(no answer)").decode(errors="replace")
    return sent, first_line

def main():
    binary = sys.argv[1]
    mnt = tempfile.mkdtemp(prefix="azaion-bench-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", mnt], check=True)
    try:
        p, addr = start(binary, os.path.join(mnt, "cache"))
        time.sleep(0.3)
        before = vm_hwm_kib(p.pid)
        size = 256 << 20
        head = (f"POST /upload/flood.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: multipart/form-data; boundary=X\r\nContent-Length: {size}\r\n\r\n").encode()
        sent, line = send(addr, head, size)
        after = vm_hwm_kib(p.pid)
        print(f"flood: {line!r} after {sent >> 20} MiB sent; VmHWM {before} -> {after} KiB, "
              f"growth {(after - before) / 1024:.1f} MiB")
        # Data first, folder last, no login.
        size = 192 << 20
        pre = b"--B\r\nContent-Disposition: form-data; name=\"data\"; filename=\"x\"\r\n\r\n"
        post = b"\r\n--B\r\nContent-Disposition: form-data; name=\"folder\"\r\n\r\nmodels\r\n--B--\r\n"
        total = len(pre) + size + len(post)
        head = (f"POST /upload/spool.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {total}\r\n\r\n").encode()
        cache = os.path.join(mnt, "cache")
        os.makedirs(cache, exist_ok=True)
        start_free = free_bytes(cache)
        lowest = [start_free]
        done = threading.Event()
        def watch():
            while not done.is_set():
                lowest[0] = min(lowest[0], free_bytes(cache)); time.sleep(0.005)
        w = threading.Thread(target=watch, daemon=True); w.start()
        sent, line = send(addr, head, size, first=pre, fill=b"\x07")
        done.set(); w.join()
        print(f"spool: {line!r} after {sent >> 20} MiB sent; free space fell by at most "
              f"{(start_free - lowest[0]) / (1 << 20):.1f} MiB")
        p.kill(); p.wait()
    finally:
        subprocess.run(["umount", mnt]); os.rmdir(mnt)

if __name__ == "__main__":
    main()
