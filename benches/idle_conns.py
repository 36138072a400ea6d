#!/usr/bin/env python3
"""Memory a proxy spends per idle client connection.

Usage: idle_conns.py PORT PID N MODE
  MODE request: each connection sends one GET and reads the whole response,
                then stays open and silent (an idle keep-alive connection)
  MODE silent:  connections are opened and never send anything

Warms the proxy up on 50 connections, then opens N in batches of 100,
waits 1.5 s (sluice parks idle connections after 250 ms), and prints one
line: RSS of PID and its children before and during, and KiB per
connection. Loopback only; everything closes when it returns.
"""
import asyncio
import os
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def rss_kib(pid):
    pids = [pid] + [int(d) for d in os.listdir("/proc") if d.isdigit() and ppid(int(d)) == pid]
    total = 0
    for p in pids:
        with open(f"/proc/{p}/smaps_rollup") as f:
            total += sum(int(l.split()[1]) for l in f if l.startswith("Rss:"))
    return total


def ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


async def connect(port, mode):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if mode == "request":
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n")
                      if l.lower().startswith(b"content-length"))
        await reader.readexactly(length)
    return writer


async def main(port, pid, n, mode):
    for _ in range(50):
        (await connect(port, "request")).close()
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    writers = []
    for i in range(0, n, 100):
        batch = [connect(port, mode) for _ in range(min(100, n - i))]
        writers += await asyncio.wait_for(asyncio.gather(*batch), 20)
    await asyncio.sleep(1.5)
    during = rss_kib(pid)
    for w in writers:
        w.close()
    print(f"mode={mode} conns={len(writers)} rss_before_kib={before} rss_during_kib={during} "
          f"kib_per_conn={(during - before) / len(writers):.1f}")


if __name__ == "__main__":
    port, pid, n, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    asyncio.run(main(port, pid, n, mode))
