"""Server memory while receiving large uploads: it should stay flat whatever the size.

    python benchmarks/upload_memory.py [--sizes-mb 8 64 256 512]

Starts `ticketguard serve` in a subprocess (embedded SQLite, no job runner), uploads files of random
bytes (rejected as unreadable after being received and staged on disk) and one file past the cap,
and prints the server's resident memory (VmRSS) and peak (VmHWM) after each.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def _random_file(path: Path, megabytes: int) -> None:
    with open(path, "wb") as handle:
        for _ in range(megabytes):
            handle.write(os.urandom(1 << 20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[8, 64, 256, 512])
    args = parser.parse_args()
    cap = max(args.sizes_mb) * (1 << 20)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TICKETGUARD_DATA_DIR=f"{tmp}/data", TICKETGUARD_EXECUTOR="external",
                   TICKETGUARD_MAX_UPLOAD_BYTES=str(cap))
        env.pop("TICKETGUARD_DATABASE_URL", None)
        created = subprocess.run([sys.executable, "-m", "service.cli", "owners", "create", "bench"], env=env,
                                 capture_output=True, text=True, check=True)
        key = created.stdout.strip().splitlines()[-1]
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    httpx.get(f"{url}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            rss, peak = _memory_mb(server.pid)
            print(f"{'upload':>14}  {'status':>6}  {'seconds':>8}  {'RSS MB':>7}  {'peak RSS MB':>11}")
            print(f"{'(idle)':>14}  {'':>6}  {'':>8}  {rss:>7.0f}  {peak:>11.0f}")
            client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600)
            for megabytes in [*args.sizes_mb, max(args.sizes_mb) + 1]:
                path = Path(tmp) / f"upload-{megabytes}.bin"
                _random_file(path, megabytes)
                start = time.perf_counter()
                with open(path, "rb") as handle:
                    response = client.post("/v1/verifications", files={"model": ("m.bin", handle)})
                elapsed = time.perf_counter() - start
                path.unlink()
                rss, peak = _memory_mb(server.pid)
                label = f"{megabytes} MB" + (" (> cap)" if megabytes > max(args.sizes_mb) else "")
                print(f"{label:>14}  {response.status_code:>6}  {elapsed:>8.2f}  {rss:>7.0f}  {peak:>11.0f}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
