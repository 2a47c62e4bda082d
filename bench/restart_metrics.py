#!/usr/bin/env python3
"""Restart metrics for a server that follows DESIGN.md's example contract (examples/hello):
old-process exit time, hand-over time, the longest gap a 2 ms probe sees, peak RSS of old +
new during a restart against steady state, CPU cost of a restart (user+sys of the old process
from the signal to its exit plus the new process's start-up), and open fds before/after N
restarts. Prints a Markdown section.

  restart_metrics.py BINARY [--restarts 5] [--fd-restarts 100] [--signal HUP]
"""
import argparse, os, signal, socket, subprocess, sys, tempfile, threading, time

TICK = os.sysconf("SC_CLK_TCK")


def get(port, path="/", timeout=2.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        s.close()


def read_pid(path):
    # Servers that write in place end with a newline once complete; those that rename a
    # finished file into place (tableflip) may have none.
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError):
        return None


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class probe(threading.Thread):
    """A request every 2 ms on a new connection; the longest time without a success."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop, self.gap, self.failures, self.count = port, False, 0.0, 0, 0

    def run(self):
        last_ok = time.monotonic()
        while not self.stop:
            t = time.monotonic()
            try:
                if b"200 OK" in get(self.port):
                    now = time.monotonic()
                    self.gap = max(self.gap, now - last_ok)
                    last_ok = now
                    self.count += 1
                else:
                    self.failures += 1
            except OSError:
                self.failures += 1
            time.sleep(max(0.0, 0.002 - (time.monotonic() - t)))


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.001)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--fd-restarts", type=int, default=100)
    ap.add_argument("--signal", default="HUP")
    ap.add_argument("--port", type=int, default=18098)
    a = ap.parse_args()
    sig = getattr(signal, "SIG" + a.signal)
    tmp = tempfile.mkdtemp()
    pidfile = os.path.join(tmp, "pid")
    log = open(os.path.join(tmp, "log"), "w")
    first = subprocess.Popen([a.binary, "--addr", f"127.0.0.1:{a.port}", "--pidfile", pidfile],
                             stdout=log, stderr=log)
    pid = wait_for(lambda: read_pid(pidfile), 10)
    if not pid:
        first.kill()
        sys.exit("server did not start")
    for _ in range(50):
        get(a.port)
    steady = rss_kib(pid)
    fds_before = fds(pid)
    p = probe(a.port)
    p.start()
    rows = []
    for i in range(a.restarts):
        time.sleep(0.5)
        old = pid
        old_cpu0 = cpu_seconds(old)
        peak = [steady]
        sampling = [True]
        last_old_cpu = [old_cpu0]

        def sample():
            while sampling[0]:
                total = rss_kib(old)
                new = read_pid(pidfile)
                if new and new != old:
                    total += rss_kib(new)
                c = cpu_seconds(old)
                if c is not None:
                    last_old_cpu[0] = c
                peak[0] = max(peak[0], total)
                time.sleep(0.002)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        t0 = time.monotonic()
        os.kill(old, sig)
        new = wait_for(lambda: (lambda n: n if n and n != old else None)(read_pid(pidfile)), 15)
        handover = (time.monotonic() - t0) * 1000
        gone = wait_for(lambda: not alive(old), 70)
        exit_ms = (time.monotonic() - t0) * 1000
        time.sleep(0.05)
        sampling[0] = False
        t.join()
        new_cpu = cpu_seconds(new) or 0.0
        rows.append((i + 1, old, new, handover, exit_ms if gone else float("nan"), peak[0],
                     (last_old_cpu[0] - old_cpu0) * 1000 + new_cpu * 1000))
        pid = new
    p.stop = True
    p.join()
    fds_after_5 = fds(pid)
    for _ in range(a.fd_restarts - a.restarts):
        old = pid
        os.kill(old, sig)
        pid = wait_for(lambda: (lambda n: n if n and n != old else None)(read_pid(pidfile)), 15)
        wait_for(lambda: not alive(old), 70)
        get(a.port)
    fds_after = fds(pid)
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), 10)
    first.wait(timeout=1) if first.poll() is None else None

    print(f"Binary: `{os.path.relpath(a.binary)}`; steady-state RSS {steady} KiB; probe: "
          f"{p.count} requests every 2 ms on new connections, {p.failures} failed, longest gap "
          f"between two answers {p.gap * 1000:.1f} ms over {a.restarts} restarts.")
    print()
    print("| restart | old pid | new pid | pid file names the new pid after | old process gone after "
          "| peak RSS old+new | peak / steady | CPU of the restart (old drain + new start) |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        cpu = f"{r[6]:.0f} ms" if r[6] >= 10 else "< 10 ms"  # /proc counts in 10 ms ticks
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} ms | {r[4]:.1f} ms | {r[5]} KiB | "
              f"{r[5] / steady:.2f}x | {cpu} |")
    print()
    print(f"Open fds of the serving process: {fds_before} at start, {fds_after_5} after "
          f"{a.restarts} restarts, {fds_after} after {a.fd_restarts} restarts.")


if __name__ == "__main__":
    main()
