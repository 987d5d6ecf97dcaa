#!/usr/bin/env python3
"""Measures two §5.3 figures of a loader binary, run as its `dev` stack
(loader, Resource API emulator, S3) with all its data on a tmpfs:

1. spool: the most free space a data-first upload (192 MiB) takes from the
   cache's file system before login (statvfs, polled every 5 ms; an unnamed
   spool file shows there too);
2. flood: after the demo login, the peak RSS growth (VmHWM) of the loader
   while a client sends 256 MiB of `multipart/form-data; boundary=X` holding
   no boundary.

    scripts/bench/boundary.py OLD_BINARY NEW_BINARY ...   # one run, side by side

Needs root for the tmpfs (so that nothing else on the machine moves the
free-space figure). Prints one line per figure and binary.
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

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def request(addr, raw):
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(raw)
        return s.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")

def start(binary, data):
    port = free_port()
    p = subprocess.Popen([binary, "dev", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr = ("127.0.0.1", port)
    for _ in range(600):
        try:
            if " 200 " in request(addr, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n") + " ":
                # The loader is the dev command's own process.
                return p, addr
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the dev stack did not start")

def login(addr):
    body = b'{"email":"demo@azaion.local","password":"demo-password"}'
    line = request(addr, b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    assert " 200 " in line + " ", line

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

def measure(binary, mnt):
    p, addr = start(binary, os.path.join(mnt, "stack"))
    try:
        # Data first, folder last, before any login.
        size = 192 << 20
        pre = b"--B\r\nContent-Disposition: form-data; name=\"data\"; filename=\"x\"\r\n\r\n"
        post = b"\r\n--B\r\nContent-Disposition: form-data; name=\"folder\"\r\n\r\nmodels\r\n--B--\r\n"
        total = len(pre) + size + len(post)
        head = (f"POST /upload/spool.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {total}\r\n\r\n").encode()
        start_free = free_bytes(mnt)
        lowest = [start_free]
        done = threading.Event()
        def watch():
            while not done.is_set():
                lowest[0] = min(lowest[0], free_bytes(mnt)); time.sleep(0.005)
        w = threading.Thread(target=watch, daemon=True); w.start()
        sent, line = send(addr, head, size, first=pre, fill=b"\x07")
        done.set(); w.join()
        print(f"{binary}: spool: {line!r} after {sent >> 20} MiB sent; free space fell by at most "
              f"{(start_free - lowest[0]) / (1 << 20):.1f} MiB", flush=True)
        login(addr)
        time.sleep(0.3)
        before = vm_hwm_kib(p.pid)
        size = 256 << 20
        head = (f"POST /upload/flood.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: multipart/form-data; boundary=X\r\nContent-Length: {size}\r\n\r\n").encode()
        sent, line = send(addr, head, size)
        after = vm_hwm_kib(p.pid)
        print(f"{binary}: flood (logged in): {line!r} after {sent >> 20} MiB sent; VmHWM {before} -> {after} KiB, "
              f"growth {(after - before) / 1024:.1f} MiB", flush=True)
    finally:
        p.kill(); p.wait()

def main():
    for binary in sys.argv[1:]:
        mnt = tempfile.mkdtemp(prefix="azaion-bench-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g", "tmpfs", mnt], check=True)
        try:
            measure(binary, mnt)
        finally:
            subprocess.run(["umount", "-l", mnt]); os.rmdir(mnt)

if __name__ == "__main__":
    main()
